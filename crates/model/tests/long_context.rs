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
use ferroseek_model::{AttentionMode, DTypeChoice};

const F32_TOLERANCE: f32 = 1e-4;
/// Between the two attention forms: f32 rounding (see `FORMS_TOLERANCE` in
/// `invariance.rs`).
const FORMS_TOLERANCE: f32 = 2e-5;

#[test]
fn a_long_prompt_matches_the_reference_in_both_forms() {
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
