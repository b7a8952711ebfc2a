//! One sequence's 128-token prefill and one decode step, ours side by side
//! with `candle_transformers::models::deepseek2` on the same weights (the
//! benchmark checkpoint: DeepSeek-V2-Lite's architecture at 265M random
//! parameters), f32 and bf16.
//!
//! `cargo bench -p ferroseek-model --bench forward` (first run writes the
//! checkpoint into `target/bench-models/`). Times are medians of `REPEATS`
//! runs, both models measured in the same process one after the other; the
//! ratio column is candle-transformers' time over ours (above 1: we are
//! faster). The last-token logits of both prefills are compared as a check
//! that both compute the same model.
//!
//! Then, at q8_0, the two forms of our attention side by side
//! ([`attention_forms`]): where the expanded form starts to pay for prompts.
//! `FERROSEEK_BENCH_ONLY=forms` runs that part alone.
//!
//! `FERROSEEK_BENCH_ONLY=prompts` runs only [`long_prompts`]: in process,
//! the long-context bench's cold and cached-prefix prompts and decode
//! steps after contexts of several lengths, without the server around
//! them (what the kernels' changes were measured with, build against
//! build).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::deepseek2::{DeepSeekV2, DeepSeekV2Config};
use ferroseek_model::testing::{bench_checkpoint, bench_checkpoint_q_lora};
use ferroseek_model::{
    resolve_model, AttentionMode, Batch, DTypeChoice, DeepSeekModel, HubOptions, LatentCache,
    LoadOptions, LogitsRows, ModelFiles, Quantization, SeqInput,
};

const PREFILL: usize = 128;
const REPEATS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn prompt() -> Vec<u32> {
    (0..PREFILL as u32).map(|t| (t * 7919) % 7900 + 2).collect()
}

/// (prefill ms, decode ms, last prefill logits)
fn ours(model: &DeepSeekModel) -> (f64, f64, Vec<f32>) {
    let tokens = prompt();
    let table: Vec<u32> = (0..32).collect();
    let mut cache = LatentCache::new(model.config(), 32, 16).unwrap();
    let prefill = Batch {
        seqs: vec![SeqInput {
            tokens: tokens.clone(),
            num_cached: 0,
            block_table: table.clone(),
            logits: LogitsRows::Last,
        }],
    };
    let mut logits = Vec::new();
    let mut p = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        logits = model
            .forward(&prefill, &mut cache)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        p.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mut d = Vec::new();
    for i in 0..REPEATS {
        let step = Batch {
            seqs: vec![SeqInput {
                tokens: vec![5],
                num_cached: PREFILL + i,
                block_table: table.clone(),
                logits: LogitsRows::Last,
            }],
        };
        let t = Instant::now();
        model.forward(&step, &mut cache).unwrap();
        d.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(p), median(d), logits)
}

fn theirs(model: &mut DeepSeekV2) -> (f64, f64, Vec<f32>) {
    let ids = Tensor::new(prompt().as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let mut logits = Vec::new();
    let mut p = Vec::new();
    for _ in 0..REPEATS {
        model.clear_kv_cache();
        let t = Instant::now();
        logits = model
            .forward(&ids, 0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        p.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let one = Tensor::new(&[[5u32]], &Device::Cpu).unwrap();
    let mut d = Vec::new();
    for i in 0..REPEATS {
        let t = Instant::now();
        model.forward(&one, PREFILL + i).unwrap();
        d.push(t.elapsed().as_secs_f64() * 1e3);
    }
    (median(p), median(d), logits)
}

fn main() {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models");
    let dir = bench_checkpoint(&cache, DType::BF16).expect("writing the bench checkpoint");
    let files = resolve_model(
        dir.to_str().expect("utf-8 path"),
        &HubOptions::from_env(None),
    )
    .expect("the bench checkpoint resolves");
    match std::env::var("FERROSEEK_BENCH_ONLY").as_deref() {
        Ok("forms") => return attention_forms(&files),
        Ok("prompts") => return long_prompts(&cache),
        _ => {}
    }
    let cfg: DeepSeekV2Config =
        serde_json::from_str(&std::fs::read_to_string(&files.config).unwrap()).unwrap();
    println!(
        "one sequence, {PREFILL}-token prefill and one decode step after it; median of {REPEATS}; threads: {}",
        candle_core::utils::get_num_threads()
    );
    println!("| dtype | op | ferroseek ms (tok/s) | candle-transformers ms (tok/s) | their time / ours |");
    println!("|---|---|---:|---:|---:|");
    // `auto` on CPU keeps the bf16 checkpoint's matrices in bf16 and computes in
    // f32; candle-transformers has no such mode, so it is compared with its bf16.
    for (name, choice, dtype) in [
        ("f32", DTypeChoice::F32, DType::F32),
        ("bf16", DTypeChoice::BF16, DType::BF16),
        (
            "auto (bf16 weights, f32 compute)",
            DTypeChoice::Auto,
            DType::BF16,
        ),
    ] {
        let model = DeepSeekModel::load(
            &files,
            &LoadOptions {
                dtype: choice,
                device: Device::Cpu,
                ..Default::default()
            },
        )
        .unwrap();
        let (op, od, ol) = ours(&model);
        drop(model);
        // SAFETY: the checkpoint is ours, under target/, and not modified while mapped.
        let vb = unsafe {
            candle_nn::VarBuilder::from_mmaped_safetensors(&files.weights, dtype, &Device::Cpu)
                .unwrap()
        };
        let mut theirs_model = DeepSeekV2::new(&cfg, vb).unwrap();
        let (tp, td, tl) = theirs(&mut theirs_model);
        drop(theirs_model);
        let diff = ol
            .iter()
            .zip(&tl)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        let rate = |tokens: usize, ms: f64| tokens as f64 * 1e3 / ms;
        println!(
            "| {name} | prefill {PREFILL} | {op:.1} ({:.0}) | {tp:.1} ({:.0}) | {:.2}x |",
            rate(PREFILL, op),
            rate(PREFILL, tp),
            tp / op
        );
        println!(
            "| {name} | decode 1 | {od:.1} ({:.1}) | {td:.1} ({:.1}) | {:.2}x |",
            rate(1, od),
            rate(1, td),
            td / od
        );
        println!("| {name} | max abs diff of last-token logits | {diff:.2e} | | |");
    }
    // Quantized at load (f32 compute); candle-transformers has no quantized DeepSeek.
    for (name, quantize) in [("q8_0", Quantization::Q8_0), ("q4_k", Quantization::Q4K)] {
        let model = DeepSeekModel::load(
            &files,
            &LoadOptions {
                dtype: DTypeChoice::F32,
                quantize,
                ..Default::default()
            },
        )
        .unwrap();
        let (op, od, _) = ours(&model);
        println!(
            "| {name} | prefill {PREFILL} | {op:.1} ({:.0}) | n/a | |",
            PREFILL as f64 * 1e3 / op
        );
        println!("| {name} | decode 1 | {od:.1} ({:.1}) | n/a | |", 1e3 / od);
    }
    attention_forms(&files);
}

/// One sequence's forward at q8_0 with `new` tokens after `cached` ones,
/// every sequence in the absorbed form against every one expanded (median
/// of 3 each, alternated), and which one the default picks: the data
/// behind `expanded_pays`' rates.
fn attention_forms(files: &ModelFiles) {
    let mut model = DeepSeekModel::load(
        files,
        &LoadOptions {
            dtype: DTypeChoice::F32,
            quantize: Quantization::Q8_0,
            max_positions: Some(8192),
            ..Default::default()
        },
    )
    .unwrap();
    let (block, blocks) = (16, 400);
    let table: Vec<u32> = (0..blocks).collect();
    let mut cache = LatentCache::new(model.config(), blocks as usize, block).unwrap();
    let mut run = |model: &DeepSeekModel, new: usize, cached: usize| {
        let batch = Batch {
            seqs: vec![SeqInput {
                tokens: (0..new as u32).map(|t| (t * 7919) % 7900 + 2).collect(),
                num_cached: cached,
                block_table: table.clone(),
                logits: LogitsRows::Last,
            }],
        };
        let t = Instant::now();
        model.forward(&batch, &mut cache).unwrap();
        t.elapsed().as_secs_f64() * 1e3
    };
    // A context to attend to.
    run(&model, 4096, 0);
    println!();
    println!("q8_0, one sequence's forward; median of 3");
    println!("| new tokens | cached | absorbed ms | expanded ms | absorbed / expanded |");
    println!("|---:|---:|---:|---:|---:|");
    for (new, cached) in [
        (8, 0),
        (16, 0),
        (32, 0),
        (64, 0),
        (128, 0),
        (512, 0),
        (2048, 0),
        (4, 4096),
        (8, 4096),
        (16, 4096),
        (32, 4096),
        (128, 4096),
        (512, 2048),
    ] {
        let (mut absorbed, mut expanded) = (vec![], vec![]);
        for _ in 0..3 {
            model.set_attention_mode(AttentionMode::Absorbed);
            absorbed.push(run(&model, new, cached));
            model.set_attention_mode(AttentionMode::Expanded);
            expanded.push(run(&model, new, cached));
        }
        let (a, e) = (median(absorbed), median(expanded));
        println!("| {new} | {cached} | {a:.1} | {e:.1} | {:.2} |", a / e);
    }
}

/// On the benchmark model with low-rank queries (as `benches/long_context.rs`
/// serves it) at q8_0, f32 cache, in process: an 8192-token prompt in
/// chunks of 2048 (as the server's scheduler takes it), then its last 512
/// tokens again after its first 7680 (the cached-prefix prompt), three
/// rounds; then decode steps after 512 to 8192 tokens, the mean of 32 a
/// round, the best of three rounds.
fn long_prompts(cache_dir: &std::path::Path) {
    let dir = bench_checkpoint_q_lora(cache_dir, DType::BF16).expect("writing the checkpoint");
    let files = resolve_model(
        dir.to_str().expect("utf-8 path"),
        &HubOptions::from_env(None),
    )
    .expect("the bench checkpoint resolves");
    let model = DeepSeekModel::load(
        &files,
        &LoadOptions {
            dtype: DTypeChoice::F32,
            quantize: Quantization::Q8_0,
            max_positions: Some(16384),
            ..Default::default()
        },
    )
    .unwrap();
    const PROMPT: usize = 8192;
    const CHUNK: usize = 2048;
    const CACHED: usize = 7680;
    const STEPS: usize = 32;
    let (block, blocks) = (16, (PROMPT + STEPS).div_ceil(16));
    let table: Vec<u32> = (0..blocks as u32).collect();
    let mut cache = LatentCache::new(model.config(), blocks, block).unwrap();
    let tokens: Vec<u32> = (0..(PROMPT + STEPS) as u32)
        .map(|t| (t * 7919) % 7900 + 2)
        .collect();
    let mut run = |from: usize, to: usize| {
        let batch = Batch {
            seqs: vec![SeqInput {
                tokens: tokens[from..to].to_vec(),
                num_cached: from,
                block_table: table.clone(),
                logits: LogitsRows::Last,
            }],
        };
        let t = Instant::now();
        model.forward(&batch, &mut cache).unwrap();
        t.elapsed().as_secs_f64()
    };
    println!(
        "q8_0, f32 cache, in process; threads: {}",
        candle_core::utils::get_num_threads()
    );
    println!("| round | {PROMPT} tokens cold, s | chunks of {CHUNK}, s | {CACHED} cached, s | cached / cold |");
    println!("|---:|---:|---|---:|---:|");
    for round in 0..3 {
        let chunks: Vec<f64> = (0..PROMPT / CHUNK)
            .map(|c| run(c * CHUNK, (c + 1) * CHUNK))
            .collect();
        let cold: f64 = chunks.iter().sum();
        let warm = run(CACHED, PROMPT);
        let parts: Vec<String> = chunks.iter().map(|c| format!("{c:.2}")).collect();
        println!(
            "| {round} | {cold:.2} | {} | {warm:.3} | {:.1}% |",
            parts.join(", "),
            warm / cold * 100.0
        );
    }
    println!();
    println!("| context | ms a decode step (best of 3 rounds of {STEPS}) |");
    println!("|---:|---:|");
    for context in [512, 768, 1024, 2048, 8192] {
        let best = (0..3)
            .map(|_| {
                let total: f64 = (0..STEPS).map(|i| run(context + i, context + i + 1)).sum();
                total / STEPS as f64 * 1e3
            })
            .fold(f64::INFINITY, f64::min);
        println!("| {context} | {best:.2} |");
    }
}
