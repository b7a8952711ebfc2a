//! The embedded default model (`models/tiny-deepseek-v3`, bf16, DeepSeek-V3
//! architecture) loads through the public path and decodes consistently.

mod common;

use common::*;
use ferroseek_model::{resolve_model, DeepSeekModel, HubOptions, LoadOptions};

#[test]
fn default_model_loads_in_f32_on_cpu_and_decodes_like_a_prefill() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-deepseek-v3");
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
    assert!(files.tokenizer.is_some() && files.generation_config.is_some());
    let model = DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();
    assert_eq!(
        model.dtype(),
        candle_core::DType::F32,
        "auto picks f32 for bf16 on CPU"
    );
    assert_eq!(model.config().eos_token_ids, vec![1]);
    let tokens: Vec<u32> = (0..21).map(|i| (i * 97 % 3900) as u32).collect();
    let mut cache = cache_for(&model, 8);
    let whole = run_in_chunks(&model, &mut cache, &blocks(0, 8), &tokens, &[21]);
    let mut cache = cache_for(&model, 8);
    let mut chunks = vec![5];
    chunks.extend(std::iter::repeat_n(1, 16));
    let stepped = run_in_chunks(&model, &mut cache, &blocks(0, 8), &tokens, &chunks);
    assert!(max_abs_diff(&whole, &stepped) < 1e-4);
}

/// On CPU, `auto` keeps the bf16 checkpoint's matrices in bf16 and computes
/// in f32: the same numbers as widening every weight to f32 at load, at half
/// the memory. Checked for a prefill (candle's GEMM on widened weights) and
/// for decode steps of one and of several rows (the decode kernel).
#[test]
fn bf16_weights_with_f32_compute_equal_an_f32_load() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-deepseek-v3");
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
    let auto = DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();
    let f32_model = DeepSeekModel::load(
        &files,
        &LoadOptions {
            dtype: ferroseek_model::DTypeChoice::F32,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(auto.weights_dtype(), candle_core::DType::BF16);
    assert_eq!(f32_model.weights_dtype(), candle_core::DType::F32);
    let tokens: Vec<u32> = (0..40).map(|i| (i * 89 % 3900) as u32).collect();
    let mut chunks = vec![30];
    chunks.extend(std::iter::repeat_n(1, 10));
    let run = |model: &DeepSeekModel| {
        let mut cache = cache_for(model, 12);
        run_in_chunks(model, &mut cache, &blocks(0, 12), &tokens, &chunks)
    };
    assert!(max_abs_diff(&run(&auto), &run(&f32_model)) < 1e-4);
}
