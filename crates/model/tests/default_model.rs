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
