//! Parity at long positions: the `v3_long_yarn` fixture's 8448-token prompt
//! (made by `scripts/make_parity_fixtures.py`), which runs past YaRN's
//! original 4096 positions, against transformers' log-probs at every 512th
//! position and the last 16, in f32, with attention in either form and in
//! the per-sequence choice. The prompt goes in chunks that cross cache
//! blocks, each after the cached rows of the ones before, one of them a
//! single token.

mod common;

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use common::*;
use ferroseek_model::{AttentionDType, AttentionMode, CacheDType, DTypeChoice, LatentCache};

const F32_TOLERANCE: f32 = 1e-4;
/// Between the two attention forms: f32 rounding (see `FORMS_TOLERANCE` in
/// `invariance.rs`).
const FORMS_TOLERANCE: f32 = 2e-5;

/// The fixture's name, reference tensors, prompt and the rows (positions)
/// its log-probs are of.
fn long_fixture() -> (&'static str, HashMap<String, Tensor>, Vec<u32>, Tensor) {
    let name = "v3_long_yarn";
    let path = fixture_dir(name).join("reference.safetensors");
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let prompt: Vec<u32> = t["prompt"]
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect();
    let rows = t["rows"].to_dtype(candle_core::DType::U32).unwrap();
    (name, t, prompt, rows)
}

#[test]
fn a_long_prompt_matches_the_reference_in_both_forms() {
    let (name, t, prompt, rows) = long_fixture();
    let n = prompt.len();
    assert!(n > 8192, "the prompt has {n} tokens");
    let chunks = [3001, 2048, 1, n - 5050];
    let mut absorbed = None;
    for mode in [
        AttentionMode::Absorbed,
        AttentionMode::Expanded,
        AttentionMode::Auto,
    ] {
        let mut model = load(name, DTypeChoice::F32);
        model.set_attention_mode(mode);
        let mut cache = cache_for(&model, n.div_ceil(BLOCK));
        let table = blocks(0, n.div_ceil(BLOCK));
        let ours = run_in_chunks(&model, &mut cache, &table, &prompt, &chunks);
        let ours = ours.index_select(&rows, 0).unwrap();
        let diff = max_abs_diff(&ours, &t["logprobs"]);
        assert!(
            diff < F32_TOLERANCE,
            "{mode:?}: log-probs differ from the reference by {diff}"
        );
        let absorbed = absorbed.get_or_insert(ours.clone());
        let diff = max_abs_diff(&ours, absorbed);
        assert!(
            diff < FORMS_TOLERANCE,
            "{mode:?}: log-probs differ from the absorbed form's by {diff}"
        );
    }
}

/// With `--kv-cache-dtype bf16`, at the same 8448 positions in both forms:
/// the rows' |Δ log-prob| against the reference (the largest over the
/// vocabulary), median under 0.02 and largest under 0.1 (measured: median
/// 0.006, largest 0.03, in both forms): no larger than on the short
/// fixtures. With `--attention-dtype bf16` too (the expanded form's
/// operands in bf16, where the CPU has AMX-BF16): median under 0.03 and
/// largest under 0.15 (measured: 0.015 and 0.072). On an fp8 cache
/// (`--kv-cache-dtype fp8`): median under 0.2, largest under 0.6
/// (measured: 0.096 and 0.30).
#[test]
fn a_long_prompt_on_a_narrow_cache_stays_within_its_bound() {
    let (name, t, prompt, rows) = long_fixture();
    let n = prompt.len();
    let tiles = ferroseek_model::kernels::attention::bf16_tiles_available();
    if !tiles {
        eprintln!("bf16 attention skipped: this CPU has no AMX-BF16 tiles");
    }
    for (dtype, mode, products, median_bound, max_bound) in [
        (
            CacheDType::Bf16,
            AttentionMode::Absorbed,
            AttentionDType::F32,
            0.02,
            0.1,
        ),
        (
            CacheDType::Bf16,
            AttentionMode::Expanded,
            AttentionDType::F32,
            0.02,
            0.1,
        ),
        (
            CacheDType::Bf16,
            AttentionMode::Expanded,
            AttentionDType::Bf16,
            0.03,
            0.15,
        ),
        (
            CacheDType::Fp8,
            AttentionMode::Absorbed,
            AttentionDType::F32,
            0.2,
            0.6,
        ),
        (
            CacheDType::Fp8,
            AttentionMode::Expanded,
            AttentionDType::F32,
            0.2,
            0.6,
        ),
    ] {
        if products == AttentionDType::Bf16 && !tiles {
            continue;
        }
        let mut model = load(name, DTypeChoice::F32);
        model.set_attention_mode(mode);
        model.set_attention_dtype(products);
        let mut cache =
            LatentCache::with_dtype(model.config(), n.div_ceil(BLOCK), BLOCK, dtype).unwrap();
        let table = blocks(0, n.div_ceil(BLOCK));
        let ours = run_in_chunks(&model, &mut cache, &table, &prompt, &[3001, n - 3001]);
        let ours = ours.index_select(&rows, 0).unwrap();
        let want = &t["logprobs"];
        let mut diffs: Vec<f32> = (0..rows.dim(0).unwrap())
            .map(|r| max_abs_diff(&ours.get(r).unwrap(), &want.get(r).unwrap()))
            .collect();
        diffs.sort_by(f32::total_cmp);
        let (median, max) = (diffs[diffs.len() / 2], diffs[diffs.len() - 1]);
        eprintln!(
            "{dtype:?} cache, {mode:?}, {products:?} products: median {median}, max {max} over {} rows",
            diffs.len()
        );
        assert!(
            median < median_bound,
            "{dtype:?} cache, {mode:?}, {products:?}: median error {median}"
        );
        assert!(
            max < max_bound,
            "{dtype:?} cache, {mode:?}, {products:?}: largest error {max}"
        );
    }
}
