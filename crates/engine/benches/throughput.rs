//! Aggregate decode throughput of the engine with 1, 4, 16 and 64
//! concurrent sequences, on the benchmark checkpoint (DeepSeek-V2-Lite's
//! architecture at 265M random parameters), f32, bf16 and q8_0
//! (`FERROSEEK_BENCH_ONLY=q8_0` runs one of them); then the cost of
//! constrained decoding: q8_0 with 1 and 8 sequences, free against held to
//! a JSON schema, alternated over several rounds (medians)
//! (`FERROSEEK_BENCH_ONLY=constrained` runs only that).
//!
//! `cargo bench -p ferroseek-engine --bench throughput` (first run writes the
//! checkpoint into `target/bench-models/`). Each row: all prompts (32 tokens)
//! are prefilled, then every sequence decodes `DECODE` tokens greedily; the
//! rate counts the tokens decoded after the last sequence's first token,
//! over the time they took. The last column is the rate relative to one
//! sequence's, measured in the same run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use ferroseek_engine::{
    Engine, EngineConfig, Event, Grammar, GrammarSpec, Grammars, SamplingFields, TokenTable,
    Tokenizer,
};
use ferroseek_model::testing::bench_checkpoint;
use ferroseek_model::{
    resolve_model, DTypeChoice, DeepSeekModel, HubOptions, LoadOptions, Quantization,
};

const PROMPT: usize = 32;
const DECODE: usize = 32;

fn tokenizer() -> Arc<Tokenizer> {
    // Any tokenizer serves: the benchmark streams ids, the text is not looked at.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny-deepseek-v3");
    Arc::new(Tokenizer::from_dir(dir).expect("the default model's tokenizer loads"))
}

/// `DECODE` tokens past eos: greedy, or sampled at temperature 1 with the
/// stream's number as the seed.
fn fields(sampled: Option<i64>) -> SamplingFields<'static> {
    SamplingFields {
        temperature: Some(if sampled.is_some() { 1.0 } else { 0.0 }),
        seed: sampled,
        max_tokens: Some(("max_tokens", DECODE as i64)),
        ignore_eos: Some(true),
        ..Default::default()
    }
}

fn run(
    engine: &Engine,
    concurrency: usize,
    grammar: Option<&Grammar>,
    sampled: bool,
) -> (f64, f64) {
    let streams: Vec<_> = (0..concurrency)
        .map(|i| {
            let prompt: Vec<u32> = (0..PROMPT as u32)
                .map(|t| (t * 7919 + i as u32 * 104_729) % 3900 + 4)
                .collect();
            let r = fields(sampled.then_some(i as i64))
                .validate(&engine.limits())
                .and_then(|v| {
                    v.with_grammar(grammar.cloned())
                        .request(format!("bench{i}"), prompt)
                })
                .expect("the bench request is valid");
            engine.submit(r).expect("the bench request fits")
        })
        .collect();
    let start = Instant::now();
    // One thread per stream records when each token arrived.
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || {
                let mut times = Vec::new();
                while let Some(e) = s.blocking_next() {
                    match e {
                        Event::Token { .. } => times.push(Instant::now()),
                        Event::Error(e) => panic!("{e}"),
                        _ => {}
                    }
                }
                times
            })
        })
        .collect();
    let times: Vec<Vec<Instant>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let first_all = times.iter().map(|t| t[0]).max().unwrap();
    let end = times.iter().map(|t| *t.last().unwrap()).max().unwrap();
    let decoded: usize = times
        .iter()
        .map(|t| t.iter().filter(|&&x| x > first_all).count())
        .sum();
    let ttft = (first_all - start).as_secs_f64();
    (decoded as f64 / (end - first_all).as_secs_f64(), ttft)
}

fn main() {
    // `cargo bench` passes `--bench`; a name filter is not supported here.
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models");
    let dir = bench_checkpoint(&cache, DType::BF16).expect("writing the bench checkpoint");
    let files = resolve_model(
        dir.to_str().expect("utf-8 path"),
        &HubOptions::from_env(None),
    )
    .expect("the bench checkpoint resolves");
    println!(
        "engine decode throughput, {PROMPT}-token prompts, {DECODE} greedy tokens each, threads: {}",
        rayon::current_num_threads()
    );
    println!("| dtype | seqs | tokens/s | prefill+first token (s) | vs 1 seq |");
    println!("|---|---:|---:|---:|---:|");
    // `auto` is what a bf16 checkpoint gets on CPU: bf16 weights, f32 compute.
    let only = std::env::var("FERROSEEK_BENCH_ONLY").ok();
    for (name, dtype, quantize) in [
        ("f32", DTypeChoice::F32, Quantization::None),
        (
            "bf16 (auto: bf16 weights, f32 compute)",
            DTypeChoice::Auto,
            Quantization::None,
        ),
        ("q8_0", DTypeChoice::F32, Quantization::Q8_0),
    ] {
        if only.as_deref().is_some_and(|o| !name.starts_with(o)) {
            continue;
        }
        let engine = start(&files, dtype, quantize);
        run(&engine, 1, None, false); // warm-up
        let mut single = 0.0;
        for c in [1, 4, 16, 64] {
            let (rate, ttft) = run(&engine, c, None, false);
            if c == 1 {
                single = rate;
            }
            println!(
                "| {name} | {c} | {rate:.1} | {ttft:.2} | {:.2}x |",
                rate / single
            );
        }
    }
    if only.as_deref().is_none_or(|o| o == "constrained") {
        constrained(&files);
    }
}

fn start(
    files: &ferroseek_model::ModelFiles,
    dtype: DTypeChoice,
    quantize: Quantization,
) -> Engine {
    let model = DeepSeekModel::load(
        files,
        &LoadOptions {
            dtype,
            quantize,
            device: Device::Cpu,
            ..Default::default()
        },
    )
    .expect("the bench checkpoint loads");
    Engine::start(
        model,
        tokenizer(),
        EngineConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 64 * PROMPT,
            kv_cache_bytes: 512 << 20,
            ..Default::default()
        },
    )
    .expect("the engine starts")
}

/// Free decoding against decoding held to a JSON schema, q8_0, 1 and 8
/// sequences, rounds alternated. Both sample at temperature 1: greedy
/// decoding of a random model repeats a few tokens, which route to fewer
/// experts than the varied tokens a grammar leads to, and that difference
/// would show as the grammar's cost.
fn constrained(files: &ferroseek_model::ModelFiles) {
    const ROUNDS: usize = 5;
    let engine = start(files, DTypeChoice::F32, Quantization::Q8_0);
    let table = TokenTable::new(engine.tokenizer(), engine.limits().vocab_size);
    let grammars = Grammars::new(engine.tokenizer().clone(), &table).expect("grammars");
    // Objects of a name, a number and a long text: the grammar cannot be
    // complete within the tokens decoded, so every sequence runs to the end
    // (a batch that shrank would show as a loss that is not the masks').
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"items": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 16},
                           "qty": {"type": "integer"},
                           "text": {"type": "string", "minLength": 4000}},
            "required": ["name", "qty", "text"]}}},
        "required": ["items"]
    });
    let grammar = grammars
        .compile(&GrammarSpec::JsonSchema(schema), None)
        .expect("the schema compiles");
    println!();
    println!(
        "constrained decoding (q8_0, {DECODE} tokens sampled at temperature 1, median of {ROUNDS} alternated rounds)"
    );
    println!("| seqs | free tokens/s | JSON schema tokens/s | schema / free |");
    println!("|---:|---:|---:|---:|");
    run(&engine, 1, Some(&grammar), true); // warm-up
    for c in [1, 8] {
        let mut free = Vec::new();
        let mut held = Vec::new();
        for _ in 0..ROUNDS {
            free.push(run(&engine, c, None, true).0);
            held.push(run(&engine, c, Some(&grammar), true).0);
        }
        let (f, h) = (median(&mut free), median(&mut held));
        println!("| {c} | {f:.1} | {h:.1} | {:.3} |", h / f);
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
