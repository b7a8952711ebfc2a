//! Shared by the model tests: loading the committed fixtures and running
//! sequences through the cache the way an engine would.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, D};
use ferroseek_model::{
    resolve_model, Batch, CacheDType, DTypeChoice, DeepSeekModel, HubOptions, LatentCache,
    LoadOptions, LogitsRows, SeqInput,
};

pub const FIXTURES: [&str; 4] = ["v2_plain", "v2_group", "v3_noaux_yarn", "v3_yarn_mscale1"];
/// Checkpoints of other families on DeepSeek-V3's architecture, each with its
/// real option mix and config.json keys: Moonlight-16B-A3B, Kimi-K2 and
/// GLM-4.7-Flash (`glm4_moe_lite`).
pub const RELATIVES: [&str; 3] = ["moonlight", "kimi_k2", "glm4_moe_lite"];

/// Every fixture with a transformers reference.
pub fn all_fixtures() -> impl Iterator<Item = &'static str> {
    FIXTURES.into_iter().chain(RELATIVES)
}
pub const BLOCK: usize = 4;

pub fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load(name: &str, dtype: DTypeChoice) -> DeepSeekModel {
    let dir = fixture_dir(name);
    let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
    let options = LoadOptions {
        dtype,
        ..LoadOptions::default()
    };
    DeepSeekModel::load(&files, &options).unwrap()
}

pub struct Case {
    pub prompt: Vec<u32>,
    pub logprobs: Tensor,
    pub bf16_logprobs: Tensor,
    pub greedy: Vec<u32>,
    pub greedy_logprobs: Tensor,
    pub greedy_margins: Vec<f32>,
}

pub fn reference(name: &str) -> Vec<Case> {
    let path = fixture_dir(name).join("reference.safetensors");
    let t: HashMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        t[k].to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    };
    (0..)
        .map_while(|k| {
            let key = |s: &str| format!("case{k}.{s}");
            t.contains_key(&key("prompt")).then(|| Case {
                prompt: ids(&key("prompt")),
                logprobs: t[&key("logprobs")].clone(),
                bf16_logprobs: t[&key("bf16_logprobs")].clone(),
                greedy: ids(&key("greedy")),
                greedy_logprobs: t[&key("greedy_logprobs")].clone(),
                greedy_margins: t[&key("greedy_margins")].to_vec1().unwrap(),
            })
        })
        .collect()
}

pub fn log_softmax(logits: &Tensor) -> Tensor {
    candle_nn::ops::log_softmax(logits, D::Minus1).unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

pub fn argmax(row: &Tensor) -> u32 {
    row.argmax(D::Minus1).unwrap().to_scalar::<u32>().unwrap()
}

/// Blocks `first..first + n` as a table.
pub fn blocks(first: u32, n: usize) -> Vec<u32> {
    (first..first + n as u32).collect()
}

pub fn cache_for(model: &DeepSeekModel, num_blocks: usize) -> LatentCache {
    cache_in(model, num_blocks, CacheDType::F32)
}

pub fn cache_in(model: &DeepSeekModel, num_blocks: usize, dtype: CacheDType) -> LatentCache {
    LatentCache::with_dtype(model.config(), num_blocks, BLOCK, dtype).unwrap()
}

/// Feeds `chunks` of one sequence in turn (each a separate forward) and returns
/// the log-probs of every token fed, `[tokens, vocab]`.
pub fn run_in_chunks(
    model: &DeepSeekModel,
    cache: &mut LatentCache,
    table: &[u32],
    tokens: &[u32],
    chunks: &[usize],
) -> Tensor {
    let mut out = Vec::new();
    let mut done = 0;
    for &n in chunks {
        let batch = Batch {
            seqs: vec![SeqInput {
                tokens: tokens[done..done + n].to_vec(),
                num_cached: done,
                block_table: table.to_vec(),
                logits: LogitsRows::All,
            }],
        };
        out.push(log_softmax(&model.forward(&batch, cache).unwrap()));
        done += n;
    }
    assert_eq!(done, tokens.len());
    Tensor::cat(&out, 0).unwrap()
}

/// The prompt's log-probabilities, `[tokens, vocab]`, in one piece.
pub fn prompt_logprobs(model: &DeepSeekModel, prompt: &[u32]) -> Tensor {
    let mut cache = cache_for(model, 32);
    run_in_chunks(model, &mut cache, &blocks(0, 32), prompt, &[prompt.len()])
}

/// (median, max) of |a - b| over all elements.
pub fn diff_stats(a: &Tensor, b: &Tensor) -> (f32, f32) {
    let mut d: Vec<f32> = (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    d.sort_by(f32::total_cmp);
    (d[d.len() / 2], d[d.len() - 1])
}
