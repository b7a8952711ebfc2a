//! The attention kernels against plain loops and a direct softmax in f64,
//! and the fused kernels against the steps one after another.

use super::item::{Item, Path};
use super::plan::{chunks_for, CHUNK_ROWS, MIN_CHUNK_ROWS, PARTIAL_BUDGET};
use super::*;

/// A deterministic pseudo-random fill in [-1, 1).
pub(super) fn fill(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let x = (i.wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(40_503)) % 2001;
            x as f32 / 1000.0 - 1.0
        })
        .collect()
}

/// A work item of `group` heads' queries `q`, scale 0.3.
fn item(q: &[f32], group: usize, width: usize, rank: usize) -> Item<'_> {
    Item {
        q,
        group,
        width,
        rank,
        scale: 0.3,
    }
}

/// The SIMD paths this CPU can run.
fn simd_paths() -> Vec<Path> {
    let mut paths = vec![];
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
        {
            paths.push(Path::Avx2);
        }
        if Path::detect() == Path::Avx512 {
            paths.push(Path::Avx512);
        }
    }
    paths
}

/// `out[i, r] = Σ_c x[i, c] · w[head][r, c]` for `[rows, cols]` weights
/// per head: a per-head matrix in plain loops.
fn product(w: &[f32], head: usize, rows: usize, x: &[f32], out: &mut [f32]) {
    let cols = x.len() / (out.len() / rows);
    let w = &w[head * rows * cols..][..rows * cols];
    for (x, out) in x.chunks_exact(cols).zip(out.chunks_exact_mut(rows)) {
        for (o, w) in out.iter_mut().zip(w.chunks_exact(cols)) {
            *o = dot(x, w);
        }
    }
}

/// The SIMD loops equal the plain ones for odd head counts, widths and
/// ranks with tails, and contexts that cross cache blocks and leave a
/// partial block of key rows; items of sixteen heads or more (the
/// head-major scores on AVX-512) with partly masked vectors of heads, more
/// than one block of them, and head counts that leave groups of eight and
/// fewer for the weighted sums.
#[test]
fn simd_paths_match_plain_loops() {
    let paths = simd_paths();
    for (group, rank, rope, context) in [
        (4, 256, 64, 300),
        (3, 40, 12, 17),
        (1, 16, 8, 1),
        (7, 24, 5, 33),
        (5, 72, 9, 6),
        (2, 8, 3, 2),
        (16, 256, 64, 300),
        (20, 40, 12, 33),
        (27, 24, 5, 17),
        (37, 16, 3, 9),
        (64, 8, 8, 20),
        (83, 24, 4, 5),
    ] {
        let width = rank + rope;
        let q = fill(group * width, 1);
        let cache = fill(320 * width, 2);
        // 40 blocks of 8 rows, in a scrambled order.
        let rows: Vec<&[f32]> = (0..context)
            .map(|t| {
                let slot = (t / 8 * 17 % 40) * 8 + t % 8;
                &cache[slot * width..(slot + 1) * width]
            })
            .collect();
        let item = item(&q, group, width, rank);
        let normalised = |out: &mut Vec<f32>, stats: Vec<RowStats>| {
            for (o, s) in out.chunks_exact_mut(rank).zip(stats) {
                o.iter_mut().for_each(|v| *v /= s.sum);
            }
        };
        let mut plain = vec![0f32; group * rank];
        let stats = item.attend(&rows, &mut plain);
        normalised(&mut plain, stats);
        for &path in &paths {
            let mut simd = vec![0f32; group * rank];
            let stats = item.attend_on(path, &rows, &mut simd);
            normalised(&mut simd, stats);
            for (a, b) in plain.iter().zip(&simd) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                    "{path:?}: {a} vs {b} ({group}, {rank}, {rope}, {context})"
                );
            }
        }
    }
}

/// Whole calls against a direct softmax in f64: sequences whose contexts
/// are split into chunks (merged by their statistics) and ones that are
/// not, several new tokens each, blocks in a scrambled order.
#[test]
fn split_contexts_match_a_direct_softmax() {
    let (heads, rank, rope, block_size) = (4, 40, 8, 16);
    let width = rank + rope;
    let blocks = 160;
    let cache = fill(blocks * block_size * width, 3);
    let table: Vec<u32> = (0..blocks as u32).map(|b| b * 37 % blocks as u32).collect();
    let seqs = [
        // 3 new tokens over 700 cached rows: split.
        SeqSpan {
            start: 0,
            num_new: 3,
            num_cached: 700,
            block_table: &table,
        },
        // Short: one chunk each.
        SeqSpan {
            start: 3,
            num_new: 2,
            num_cached: 30,
            block_table: &table[50..],
        },
        // Exactly one chunk, then one row over.
        SeqSpan {
            start: 5,
            num_new: 2,
            num_cached: CHUNK_ROWS - 1,
            block_table: &table[100..],
        },
    ];
    let tokens = 7;
    let queries = fill(tokens * heads * width, 4);
    let shape = LatentShape {
        heads,
        rank,
        width,
        block_size,
    };
    let got = absorbed_attention(&queries, &cache, &seqs, shape, 0.2);
    let mut token = 0;
    for span in &seqs {
        for j in 0..span.num_new {
            let context = span.num_cached + j + 1;
            let row = |t: usize| {
                let slot = span.block_table[t / block_size] as usize * block_size + t % block_size;
                &cache[slot * width..(slot + 1) * width]
            };
            for h in 0..heads {
                let q = &queries[(token * heads + h) * width..][..width];
                let scores: Vec<f64> = (0..context)
                    .map(|t| {
                        let key = row(t);
                        0.2 * (0..width).map(|c| q[c] as f64 * key[c] as f64).sum::<f64>()
                    })
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let weights: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f64 = weights.iter().sum();
                for c in 0..rank {
                    let want = (0..context)
                        .map(|t| weights[t] * row(t)[c] as f64)
                        .sum::<f64>()
                        / total;
                    let have = got[(token * heads + h) * rank + c] as f64;
                    assert!(
                        (want - have).abs() <= 1e-5 * (1.0 + want.abs()),
                        "token {token} head {h} column {c}: {have} vs {want}"
                    );
                }
            }
            token += 1;
        }
    }
}

/// Both fused kernels equal the three steps run one after another (the
/// per-head matrices here plain f32 products): sequences mid-decode,
/// one with a context long enough to be split into chunks, one a
/// prompt longer than an item's chunk of tokens, blocks in a scrambled
/// order, head counts no power of two: 12, and 40, whose unfused items
/// hold all forty heads (the head-major scores on AVX-512) while the fused
/// ones hold ten. Within 1e-6 where both run one scores kernel, 1e-5 (as
/// between paths, [`simd_paths_match_plain_loops`]) where they may not.
/// And every one of them on the cache in bf16 gives what it gives on those
/// values widened to f32.
#[test]
fn fused_equals_the_steps_one_after_another() {
    fused_equals_the_steps_with(12, 1e-6);
    fused_equals_the_steps_with(40, 1e-5);
}

/// [`fused_equals_the_steps_one_after_another`] with `heads` heads, the
/// fused kernels within `bound` (relative) of the steps.
fn fused_equals_the_steps_with(heads: usize, bound: f32) {
    let (nope, rank, rope, v_dim, block_size) = (24, 40, 8, 20, 16);
    let width = rank + rope;
    let blocks = 60;
    let (narrow, cache) = bf16_and_widened(&fill(blocks * block_size * width, 5));
    let table: Vec<u32> = (0..blocks as u32).map(|b| b * 7 % blocks as u32).collect();
    let seqs = [
        SeqSpan {
            start: 0,
            num_new: 2,
            num_cached: 700,
            block_table: &table,
        },
        SeqSpan {
            start: 2,
            num_new: 37,
            num_cached: 3,
            block_table: &table[45..],
        },
    ];
    let tokens = 39;
    let (w_uk, w_uv) = (fill(heads * rank * nope, 6), fill(heads * v_dim * rank, 7));
    let matrices = HeadMatrices {
        nope,
        v_dim,
        uk: |h: usize, x: &[f32], out: &mut [f32]| product(&w_uk, h, rank, x, out),
        uv: |h: usize, x: &[f32], out: &mut [f32]| product(&w_uv, h, v_dim, x, out),
    };
    let (q_nope, q_pe) = (
        fill(tokens * heads * nope, 8),
        fill(tokens * heads * rope, 9),
    );
    let shape = LatentShape {
        heads,
        rank,
        width,
        block_size,
    };
    let mut queries = vec![0f32; tokens * heads * width];
    for (i, q) in queries.chunks_exact_mut(width).enumerate() {
        (matrices.uk)(i % heads, &q_nope[i * nope..][..nope], &mut q[..rank]);
        q[rank..].copy_from_slice(&q_pe[i * rope..][..rope]);
    }
    let latents = absorbed_attention(&queries, &cache, &seqs, shape, 0.3);
    let close = |got: &[f32], want: &[f32], what: &str, bound: f32| {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(
                (a - b).abs() <= bound * (1.0 + b.abs()),
                "{heads} heads, {what}, number {i}: {a} against {b}"
            );
        }
    };
    let on_bf16 = absorbed_attention(&queries, &narrow, &seqs, shape, 0.3);
    close(&on_bf16, &latents, "unfused on bf16", 1e-6);
    let mut want = vec![0f32; tokens * heads * v_dim];
    for (i, out) in want.chunks_exact_mut(v_dim).enumerate() {
        (matrices.uv)(i % heads, &latents[i * rank..][..rank], out);
    }
    let (q, m) = ((&q_nope[..], &q_pe[..]), &matrices);
    let runs = [
        (
            fused_absorbed_attention(q.0, q.1, &cache, &seqs, shape, 0.3, m),
            fused_absorbed_attention(q.0, q.1, &narrow, &seqs, shape, 0.3, m),
        ),
        (
            phased_absorbed_attention(q.0, q.1, &cache, &seqs, shape, 0.3, m),
            phased_absorbed_attention(q.0, q.1, &narrow, &seqs, shape, 0.3, m),
        ),
    ];
    for (got, on_bf16) in runs {
        close(&got, &want, "fused against the steps", bound);
        close(&on_bf16, &got, "fused on bf16", 1e-6);
    }
}

/// Long contexts split into 512-row chunks, unless the partial outputs
/// of that many tokens would pass the budget; shorter chunks, of at least
/// 64 rows, where the tokens' chunks would be fewer than the spans asked.
#[test]
fn split_contexts_stay_within_the_partial_budget() {
    // One decode token of DeepSeek-V3's attention (128 heads, rank 512).
    let per_chunk = 128 * 512;
    assert_eq!(chunks_for(100, 1, per_chunk, 0), 1);
    assert_eq!(chunks_for(2048, 1, per_chunk, 0), 4);
    assert_eq!(chunks_for(2049, 1, per_chunk, 0), 5);
    // A 128K-token context: as many chunks as the budget allows.
    assert_eq!(
        chunks_for(131_072, 1, per_chunk, 4),
        PARTIAL_BUDGET / per_chunk
    );
    // A long prompt's prefill: no split.
    assert_eq!(chunks_for(8192, 4096, per_chunk, 4), 1);
    assert!(16 * chunks_for(65_536, 16, per_chunk, 4) * per_chunk <= PARTIAL_BUDGET);

    // Spans for 2 threads (4) or 8 (16): one token's context is split
    // into that many chunks, none under 64 rows.
    assert_eq!(chunks_for(1024, 1, per_chunk, 4), 4);
    assert_eq!(chunks_for(1024, 1, per_chunk, 16), 16);
    assert_eq!(chunks_for(200, 1, per_chunk, 16), 200 / MIN_CHUNK_ROWS);
    assert_eq!(chunks_for(40, 1, per_chunk, 16), 1);
    // Two tokens share the spans; four already make them.
    assert_eq!(chunks_for(1024, 2, per_chunk, 4), 2);
    assert_eq!(chunks_for(1024, 4, per_chunk, 4), 2);
    // Long contexts keep their 512-row chunks.
    assert_eq!(chunks_for(8192, 1, per_chunk, 4), 16);
}

/// `values` rounded to bf16, and those roundings widened back to f32.
pub(super) fn bf16_and_widened(values: &[f32]) -> (Vec<half::bf16>, Vec<f32>) {
    narrowed_and_widened(values)
}

/// `values` rounded to `E`, and those roundings widened back to f32.
fn narrowed_and_widened<E: Latent>(values: &[f32]) -> (Vec<E>, Vec<f32>) {
    let narrow: Vec<E> = values.iter().map(|&v| E::from_f32(v)).collect();
    let wide = narrow.iter().map(|v| v.to_f32()).collect();
    (narrow, wide)
}

/// A bf16 or fp8 cache gives, on every path, the numbers an f32 cache
/// holding the same (rounded) values gives: only the storage is narrower.
/// Widths with tails exercise the masked narrow loads; eight heads over 37
/// rows, an fp8 cache's widening in tiles with a short last one; sixteen
/// heads and more, the head-major scores of widened rows.
#[test]
fn narrow_rows_give_the_numbers_of_their_f32_values() {
    narrow_rows_give_their_values::<half::bf16>();
    narrow_rows_give_their_values::<float8::F8E4M3>();
}

fn narrow_rows_give_their_values<E: Latent>() {
    let mut paths = vec![Path::Plain];
    paths.extend(simd_paths());
    for (group, rank, rope, context) in [
        (4, 256, 64, 300),
        (3, 40, 12, 17),
        (5, 72, 9, 6),
        (8, 40, 9, 37),
        (16, 256, 64, 40),
        (27, 40, 9, 37),
    ] {
        let width = rank + rope;
        let q = fill(group * width, 11);
        let (narrow, wide) = narrowed_and_widened::<E>(&fill(context * width, 12));
        let rows_narrow: Vec<&[E]> = narrow.chunks_exact(width).collect();
        let rows32: Vec<&[f32]> = wide.chunks_exact(width).collect();
        let item = item(&q, group, width, rank);
        let mut want = vec![0f32; group * rank];
        let want_stats = item.attend(&rows32, &mut want);
        for &path in &paths {
            let mut got = vec![0f32; group * rank];
            let stats = item.attend_on(path, &rows_narrow, &mut got);
            for (a, b) in stats.iter().zip(&want_stats) {
                assert!(
                    (a.max - b.max).abs() <= 1e-5 * (1.0 + b.max.abs()),
                    "{path:?}"
                );
                assert!(
                    (a.sum - b.sum).abs() <= 1e-5 * (1.0 + b.sum.abs()),
                    "{path:?}"
                );
            }
            for (a, b) in got.iter().zip(&want) {
                assert!(
                    (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                    "{path:?}: {a} vs {b} ({group}, {rank}, {rope}, {context})"
                );
            }
        }
    }
}

/// Every path widens a row of each storage type to the numbers the plain
/// loop gives, tails included.
#[test]
fn every_path_widens_rows_as_the_plain_loop() {
    fn check<E: Latent>() {
        for len in [576, 37, 8, 3] {
            let (narrow, want) = narrowed_and_widened::<E>(&fill(len, 40 + len as u32));
            for path in simd_paths() {
                let mut got = vec![f32::NAN; len];
                path.widen(&narrow, &mut got);
                assert_eq!(got, want, "{path:?}, {len} numbers");
            }
        }
    }
    check::<f32>();
    check::<half::bf16>();
    check::<float8::F8E4M3>();
}

/// The vector loads widen every fp8 e4m3 number (subnormals, zeros,
/// ±448) exactly as `float8` does; only its NaNs are left out, which the
/// cache never holds (larger numbers saturate).
#[cfg(target_arch = "x86_64")]
#[test]
fn fp8_loads_widen_every_number() {
    use float8::F8E4M3;
    use std::arch::x86_64::*;
    let codes: Vec<F8E4M3> = (0..=255u8)
        .filter(|b| b & 0x7f != 0x7f)
        .map(F8E4M3::from_bits)
        .collect();
    let want: Vec<f32> = codes.iter().map(|c| c.to_f32()).collect();
    assert_eq!(F8E4M3::from_f32(1e6).to_f32(), 448.0, "saturation");
    if std::is_x86_feature_detected!("avx512bw") && std::is_x86_feature_detected!("avx512vl") {
        for (chunk, want) in codes.chunks(16).zip(want.chunks(16)) {
            let mut got = [0f32; 16];
            // SAFETY: the CPU has AVX-512F, BW and VL; the mask covers the chunk.
            unsafe {
                let m = (((1u32 << chunk.len()) - 1) & 0xffff) as __mmask16;
                _mm512_storeu_ps(got.as_mut_ptr(), F8E4M3::load16(chunk.as_ptr(), m));
            }
            assert_eq!(&got[..chunk.len()], want);
        }
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c") {
        for (chunk, want) in codes.chunks_exact(8).zip(want.chunks_exact(8)) {
            let mut got = [0f32; 8];
            // SAFETY: the CPU has AVX2 and F16C; the chunk holds eight.
            unsafe { _mm256_storeu_ps(got.as_mut_ptr(), F8E4M3::load8(chunk.as_ptr())) };
            assert_eq!(got, want);
        }
    }
}
