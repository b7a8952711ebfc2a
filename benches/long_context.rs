//! Long prompts through the real server, side by side with llama.cpp's.
//!
//! `cargo bench -p ferroseek --bench long_context`
//!
//! On the benchmark model (DeepSeek-V2-Lite's architecture at 265M random
//! parameters) with low-rank queries (`q_lora_rank` 384: llama.cpp reads
//! V2-Lite's layout only at its own depth of 27 layers), at q8_0
//! (`FERROSEEK_BENCH_QUANT` changes it), the `ferroseek` binary answers
//! token-id prompts on
//! `/v1/completions`, greedy, `ignore_eos`, one request at a time:
//! - **prefill**: prompts of 512, 2k, 8k and 16k tokens, each new (no cached
//!   prefix), one token generated: prompt tokens over the request's time;
//! - **decode after** 2k, 8k and 16k tokens: the last prompt of that length
//!   asked again for 65 tokens and for 1 (now cached, both prefill only its
//!   last tokens): 64 tokens over the difference of the two times;
//! - **time to first token** of an 8k prompt whose first 7.5k tokens are
//!   those of the 8k prompt before (cached), against that cold prompt's.
//!
//! With `FERROSEEK_BENCH_LLAMA_SERVER` naming a llama.cpp `llama-server`
//! binary and `FERROSEEK_BENCH_LLAMA_GGUF` a GGUF of the benchmark model
//! (`scripts/bench_model_gguf.sh target/bench-models/random-v2-lite-q-lora-bf16`
//! writes one), llama.cpp's server answers
//! the same requests in the same run, on as many threads, and the table
//! gives both and their ratio; without them its column says why it is
//! missing. llama.cpp keeps its cache in f16; ferroseek is measured with
//! each entry of `FERROSEEK_BENCH_KV_CACHE_DTYPES` (default
//! `f32,bf16,bf16:bf16`), a column each: a `--kv-cache-dtype`, and after a
//! colon an `--attention-dtype` (f32 without one).
//! `FERROSEEK_BENCH_LENGTHS` (say `512,2048`) measures fewer lengths.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{completion_seconds as time, llama_cpp, prompt, wait_ready, Server};

use candle_core::DType;
use ferroseek_model::testing::bench_checkpoint_q_lora;

const LENGTHS: [usize; 4] = [512, 2048, 8192, 16384];
/// Decode is measured after these prompt lengths.
const DECODE_AFTER: [usize; 3] = [2048, 8192, 16384];
const DECODE_TOKENS: usize = 64;
/// The cached-prefix case: a prompt of `CACHED_PROMPT` tokens whose first
/// `CACHED_PREFIX` were sent before.
const CACHED_PROMPT: usize = 8192;
const CACHED_PREFIX: usize = 7680;
/// Prompts up to this many tokens are timed this many times (the best
/// counts); longer ones once.
const SHORT: usize = 2048;
const SHORT_RUNS: usize = 3;

/// `column`: a `--kv-cache-dtype`, and after a colon an `--attention-dtype`.
fn ferroseek(dir: &std::path::Path, quant: &str, column: &str, context: usize) -> Server {
    let context = context.to_string();
    let (cache, attention) = column.split_once(':').unwrap_or((column, "f32"));
    common::ferroseek(
        dir,
        &[
            "--kv-cache-memory",
            "1GiB",
            "--served-model-name",
            "bench",
            "--dtype",
            "f32",
            "--quantize",
            quant,
            "--max-model-len",
            &context,
            "--kv-cache-dtype",
            cache,
            "--attention-dtype",
            attention,
        ],
    )
}

/// One server's figures, keyed as the table's rows.
async fn measure(server: &Server, lengths: &[usize]) -> Vec<(String, f64)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()
        .unwrap();
    let base = &server.base;
    wait_ready(&client, base).await;
    let mut seed = 1;
    let mut fresh = |n| {
        seed += 1;
        prompt(n, seed)
    };
    time(&client, base, &fresh(64), 4).await; // warm-up
    let (mut prefill, mut decode, mut ttft) = (vec![], vec![], vec![]);
    for &n in lengths {
        let runs = if n <= SHORT { SHORT_RUNS } else { 1 };
        let (mut best, mut last) = (f64::INFINITY, vec![]);
        for _ in 0..runs {
            last = fresh(n);
            best = best.min(time(&client, base, &last, 1).await);
        }
        eprintln!("{}: prefill {n}: {best:.2} s", server.name);
        prefill.push((
            format!("prefill, {n}-token prompt (tok/s)"),
            n as f64 / best,
        ));
        if DECODE_AFTER.contains(&n) {
            // The last prompt is cached now: both requests prefill its
            // last tokens only.
            let long = time(&client, base, &last, DECODE_TOKENS + 1).await;
            let short = time(&client, base, &last, 1).await;
            eprintln!(
                "{}: decode after {n}: {long:.2} s against {short:.2} s",
                server.name
            );
            decode.push((
                format!("decode, {DECODE_TOKENS} tokens after {n} (tok/s)"),
                DECODE_TOKENS as f64 / (long - short),
            ));
        }
        if n == CACHED_PROMPT {
            // The same first tokens, then new ones.
            let mut p = last[..CACHED_PREFIX].to_vec();
            p.extend(fresh(CACHED_PROMPT - CACHED_PREFIX));
            let warm = time(&client, base, &p, 1).await;
            eprintln!(
                "{}: {n} after a cached {CACHED_PREFIX}: {warm:.2} s",
                server.name
            );
            ttft.push((
                format!("time to first token, {n} tokens, {CACHED_PREFIX} cached (s)"),
                warm,
            ));
            ttft.push((format!("time to first token, {n} tokens, cold (s)"), best));
        }
    }
    prefill.into_iter().chain(decode).chain(ttft).collect()
}

fn main() {
    let threads = ferroseek_model::set_threads(None);
    let lengths: Vec<usize> = match std::env::var("FERROSEEK_BENCH_LENGTHS") {
        Ok(v) => v
            .split(',')
            .map(|n| n.trim().parse().expect("a length"))
            .collect(),
        Err(_) => LENGTHS.to_vec(),
    };
    let quant = std::env::var("FERROSEEK_BENCH_QUANT").unwrap_or_else(|_| "q8_0".into());
    let context = lengths.iter().max().copied().unwrap_or(0) + DECODE_TOKENS + 64;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = bench_checkpoint_q_lora(&root.join("target/bench-models"), DType::BF16)
        .expect("writing the bench checkpoint");
    // The server needs a tokenizer; the test model's serves (ids it does
    // not know decode to nothing, and only token counts are read).
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join("models/tiny-deepseek-v3").join(f), dir.join(f)).unwrap();
    }
    let caches: Vec<String> = std::env::var("FERROSEEK_BENCH_KV_CACHE_DTYPES")
        .unwrap_or_else(|_| "f32,bf16,bf16:bf16".into())
        .split(',')
        .map(|c| c.trim().to_string())
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ours: Vec<Vec<(String, f64)>> = caches
        .iter()
        .map(|cache| {
            let server = ferroseek(&dir, &quant, cache, context);
            rt.block_on(measure(&server, &lengths))
        })
        .collect();
    let theirs = match (
        std::env::var("FERROSEEK_BENCH_LLAMA_SERVER"),
        std::env::var("FERROSEEK_BENCH_LLAMA_GGUF"),
    ) {
        (Ok(binary), Ok(gguf)) => {
            let server = llama_cpp(&binary, &gguf, threads, context);
            Ok(rt.block_on(measure(&server, &lengths)))
        }
        _ => Err("not run: set FERROSEEK_BENCH_LLAMA_SERVER and FERROSEEK_BENCH_LLAMA_GGUF"),
    };
    println!("threads: {threads}; weights: {quant}; one request at a time");
    // `bf16:bf16` reads "bf16, bf16 attention".
    let name = |c: &String| match c.split_once(':') {
        Some((cache, attention)) => format!("{cache}, {attention} attention"),
        None => c.clone(),
    };
    let columns: Vec<String> = caches
        .iter()
        .map(|c| format!("ferroseek {}", name(c)))
        .collect();
    let ratios: Vec<String> = caches
        .iter()
        .map(|c| format!("ratio {}", name(c)))
        .collect();
    println!(
        "| | {} | llama.cpp | {} |",
        columns.join(" | "),
        ratios.join(" | ")
    );
    println!(
        "|---|{}---:|{}",
        "---:|".repeat(caches.len()),
        "---:|".repeat(caches.len())
    );
    for (i, (row, _)) in ours[0].iter().enumerate() {
        let values: Vec<f64> = ours.iter().map(|rows| rows[i].1).collect();
        let shown: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
        let (peer, ratios) = match &theirs {
            Ok(rows) => {
                let peer = rows[i].1;
                // Times: theirs over ours; rates: ours over theirs.
                let ratios: Vec<String> = values
                    .iter()
                    .map(|value| {
                        let ratio = if row.ends_with("(s)") {
                            peer / value
                        } else {
                            value / peer
                        };
                        format!("{ratio:.2}x")
                    })
                    .collect();
                (format!("{peer:.2}"), ratios)
            }
            Err(why) => (why.to_string(), vec![String::new(); values.len()]),
        };
        println!(
            "| {row} | {} | {peer} | {} |",
            shown.join(" | "),
            ratios.join(" | ")
        );
    }
}
