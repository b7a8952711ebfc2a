//! The cache and batching must not change the numbers: prefill-then-decode,
//! chunked prefill, batching with other sequences and the expanded attention
//! form all give the logits of one plain prefill.

mod common;

use candle_core::{IndexOp, Tensor};
use common::*;
use ferroseek_model::{AttentionMode, Batch, CacheDType, DTypeChoice, LogitsRows, SeqInput};

/// Matmuls of different shapes sum in different orders: f32 rounding of
/// ~2e-5 nats is expected; a real error (a wrong position, a missed token) is
/// orders of magnitude larger. Same bound as the reference parity.
const TOLERANCE: f32 = 1e-4;

/// On a bf16 cache, each latent is rounded to 8 significant bits as it is
/// written. Where two computations of it (two chunkings, two attention
/// forms, a batch and a lone sequence) differ by f32 rounding on either
/// side of a bf16 rounding boundary, the two caches hold it one bf16 step
/// (0.4%) apart, and later log-probs move with it: by up to 3.2e-3 on
/// these fixtures, most cases staying within the f32 bounds. A wrong row,
/// position or block moves them by 0.1 or more.
const BF16_TOLERANCE: f32 = 1e-2;

/// The same on an fp8 e4m3 cache, whose step is 6% (4 significant bits):
/// a computation that crosses one of its rounding boundaries moves that
/// latent 16 bf16 steps, and log-probs by about 16 times the bf16
/// figure, 0.05. None crossed on these fixtures (largest difference
/// 1.1e-5, as in f32): the coarser the grid, the rarer a crossing.
const FP8_TOLERANCE: f32 = 8e-2;

/// Every cache dtype, each test run on all of them.
const CACHE_DTYPES: [CacheDType; 3] = [CacheDType::F32, CacheDType::Bf16, CacheDType::Fp8];

/// `f32_bound` on an f32 cache, [`BF16_TOLERANCE`] on a bf16 one,
/// [`FP8_TOLERANCE`] on an fp8 one.
fn bound(dtype: CacheDType, f32_bound: f32) -> f32 {
    match dtype {
        CacheDType::F32 => f32_bound,
        CacheDType::Bf16 => BF16_TOLERANCE,
        CacheDType::Fp8 => FP8_TOLERANCE,
    }
}

fn prompt(name: &str) -> Vec<u32> {
    reference(name).remove(2).prompt
}

fn one_piece(name: &str, mode: AttentionMode, dtype: CacheDType) -> Tensor {
    let mut model = load(name, DTypeChoice::F32);
    model.set_attention_mode(mode);
    let tokens = prompt(name);
    let mut cache = cache_in(&model, 16, dtype);
    run_in_chunks(&model, &mut cache, &blocks(0, 16), &tokens, &[tokens.len()])
}

/// On either cache dtype: a bf16 cache rounds each row as it is written,
/// and every later read sees the same rounded row.
#[test]
fn chunked_prefill_and_decode_equal_one_prefill() {
    for dtype in CACHE_DTYPES {
        for name in all_fixtures() {
            let model = load(name, DTypeChoice::F32);
            let tokens = prompt(name);
            let whole = one_piece(name, AttentionMode::Absorbed, dtype);
            let n = tokens.len();
            // Odd chunk sizes that straddle block boundaries, then one token at a time.
            let mut chunks = vec![3, 6, 1];
            chunks.extend(std::iter::repeat_n(1, n - 10));
            let mut cache = cache_in(&model, 16, dtype);
            // A non-contiguous, shuffled block table.
            let table: Vec<u32> = vec![9, 2, 14, 5, 0, 11, 7, 3];
            let chunked = run_in_chunks(&model, &mut cache, &table, &tokens, &chunks);
            let diff = max_abs_diff(&whole, &chunked);
            assert!(
                diff < bound(dtype, TOLERANCE),
                "{name}, {dtype:?}: chunked differs by {diff}"
            );
        }
    }
}

/// The two attention forms compute the same sums in different orders and
/// shapes: their log-probs agree to f32 rounding. These fixtures' peaked
/// distributions put log-probs near -30, where one f32 step is 1.9e-6, and
/// rounding anywhere in the stack moves their logits by a few such steps:
/// the absorbed form against itself, in one piece and in chunks, differs
/// by up to 7.6e-6, and transformers' eager and sdpa attention by 9.5e-6
/// on the long fixture. The forms differ by up to 1.8e-5; a real error (a
/// wrong position, a missed row) is orders of magnitude larger.
const FORMS_TOLERANCE: f32 = 2e-5;

/// Both forms, and the per-sequence choice, give the same log-probs for a
/// prompt in one piece and in chunks after cached rows (blocks of 4, the
/// chunks crossing them, the table scrambled), on either cache dtype.
#[test]
fn expanded_attention_equals_absorbed() {
    for dtype in CACHE_DTYPES {
        for name in all_fixtures() {
            let tokens = prompt(name);
            let chunks = [7, 11, tokens.len() - 18];
            let table: Vec<u32> = vec![9, 2, 14, 5, 0, 11, 7, 3];
            let run = |mode| {
                let mut model = load(name, DTypeChoice::F32);
                model.set_attention_mode(mode);
                let mut cache = cache_in(&model, 16, dtype);
                let chunked = run_in_chunks(&model, &mut cache, &table, &tokens, &chunks);
                (one_piece(name, mode, dtype), chunked)
            };
            let (whole, chunked) = run(AttentionMode::Absorbed);
            for mode in [AttentionMode::Expanded, AttentionMode::Auto] {
                let (w, c) = run(mode);
                for (what, a, b) in [("in one piece", &whole, &w), ("in chunks", &chunked, &c)] {
                    let diff = max_abs_diff(a, b);
                    assert!(
                        diff < bound(dtype, FORMS_TOLERANCE),
                        "{name}, {dtype:?}, {what}: absorbed vs {mode:?} differ by {diff}"
                    );
                }
            }
        }
    }
}

/// On either cache dtype.
#[test]
fn a_sequence_in_a_mixed_batch_equals_it_alone() {
    for (dtype, name) in CACHE_DTYPES
        .into_iter()
        .flat_map(|d| all_fixtures().map(move |n| (d, n)))
    {
        let model = load(name, DTypeChoice::F32);
        let cases = reference(name);
        let alone: Vec<Tensor> = cases
            .iter()
            .map(|c| {
                let mut cache = cache_in(&model, 16, dtype);
                let n = c.prompt.len();
                run_in_chunks(&model, &mut cache, &blocks(0, 8), &c.prompt, &[n])
            })
            .collect();
        // Sequence 0 decodes its last token (rest cached), 1 prefills all at once,
        // 2 prefills its second half: three lengths and positions in one forward.
        let mut cache = cache_in(&model, 32, dtype);
        let p = |k: usize| cases[k].prompt.clone();
        let n0 = p(0).len();
        run_in_chunks(
            &model,
            &mut cache,
            &blocks(0, 8),
            &p(0)[..n0 - 1],
            &[n0 - 1],
        );
        let half = p(2).len() / 2;
        run_in_chunks(&model, &mut cache, &blocks(16, 8), &p(2)[..half], &[half]);
        let batch = Batch {
            seqs: vec![
                SeqInput {
                    tokens: p(0)[n0 - 1..].to_vec(),
                    num_cached: n0 - 1,
                    block_table: blocks(0, 8),
                    logits: LogitsRows::Last,
                },
                SeqInput {
                    tokens: p(1),
                    num_cached: 0,
                    block_table: blocks(8, 8),
                    logits: LogitsRows::All,
                },
                SeqInput {
                    tokens: p(2)[half..].to_vec(),
                    num_cached: half,
                    block_table: blocks(16, 8),
                    logits: LogitsRows::All,
                },
            ],
        };
        let got = log_softmax(&model.forward(&batch, &mut cache).unwrap());
        let n1 = p(1).len();
        let n2 = p(2).len() - half;
        let pairs = [
            (got.i(0..1).unwrap(), alone[0].i(n0 - 1..n0).unwrap()),
            (got.i(1..1 + n1).unwrap(), alone[1].clone()),
            (
                got.i(1 + n1..1 + n1 + n2).unwrap(),
                alone[2].i(half..).unwrap(),
            ),
        ];
        for (k, (a, b)) in pairs.iter().enumerate() {
            let diff = max_abs_diff(a, b);
            assert!(
                diff < bound(dtype, TOLERANCE),
                "{name}, {dtype:?}: sequence {k} differs by {diff} in a batch"
            );
        }
    }
}
