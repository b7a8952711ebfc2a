//! Serving GGUF files: load time and decode speed, side by side with
//! llama.cpp's server on the same files.
//!
//! `cargo bench -p ferroseek --bench gguf`
//!
//! On the benchmark model with low-rank queries (DeepSeek-V2-Lite's
//! architecture at 265M random parameters, `q_lora_rank` 384), as a `q8_0`
//! GGUF from llama.cpp's converter and a `Q4_K_M` one from its
//! `llama-quantize`, and a `Q5_K_M` one: `scripts/bench_model_gguf.sh
//! target/bench-models/random-v2-lite-q-lora-bf16` writes them and prints
//! the variables naming them (`FERROSEEK_BENCH_GGUF_Q8_0`,
//! `FERROSEEK_BENCH_GGUF_Q4_K_M`, `FERROSEEK_BENCH_GGUF_Q5_K_M`); a file
//! not named is skipped with a message. For each file:
//! - **load**: from starting the `ferroseek` binary to `/health` answering,
//!   against the same from the safetensors checkpoint quantized in situ
//!   (`--quantize q8_0` / `q4_k`; there is no in-situ Q5_K), and against
//!   reading the file once (from the page cache, as the load that follows
//!   does);
//! - **decode**: a 32-token prompt asked for 129 tokens and for 1, greedy,
//!   `ignore_eos`, one request at a time: 128 tokens over the difference.
//!   With `FERROSEEK_BENCH_LLAMA_SERVER` naming a `llama-server` binary,
//!   llama.cpp's server decodes from the same file in the same run, on as
//!   many threads.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::DType;
use common::{completion_seconds, ferroseek, llama_cpp, prompt, wait_ready, Server};
use ferroseek_model::testing::bench_checkpoint_q_lora;

const PROMPT: usize = 32;
const DECODE_TOKENS: usize = 128;
const CONTEXT: usize = 512;

/// Seconds from starting `start` to its `/health` answering 200, and the
/// server.
fn timed_start(rt: &tokio::runtime::Runtime, start: impl FnOnce() -> Server) -> (f64, Server) {
    let client = reqwest::Client::new();
    let began = Instant::now();
    let server = start();
    rt.block_on(wait_ready(&client, &server.base));
    (began.elapsed().as_secs_f64(), server)
}

/// Decode tokens/s of one request at a time.
fn decode_rate(rt: &tokio::runtime::Runtime, server: &Server) -> f64 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    rt.block_on(async {
        wait_ready(&client, &server.base).await;
        let ids = prompt(PROMPT, 1);
        completion_seconds(&client, &server.base, &ids, 4).await; // warm-up
        let mut best = f64::INFINITY;
        for seed in 2..5 {
            let ids = prompt(PROMPT, seed);
            let long = completion_seconds(&client, &server.base, &ids, DECODE_TOKENS + 1).await;
            let short = completion_seconds(&client, &server.base, &ids, 1).await;
            best = best.min(long - short);
        }
        DECODE_TOKENS as f64 / best
    })
}

fn read_once(path: &Path) -> f64 {
    let began = Instant::now();
    let bytes = std::fs::read(path).unwrap();
    std::hint::black_box(&bytes);
    began.elapsed().as_secs_f64()
}

fn main() {
    let threads = ferroseek_model::set_threads(None);
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = bench_checkpoint_q_lora(&root.join("target/bench-models"), DType::BF16)
        .expect("writing the bench checkpoint");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(root.join("models/tiny-deepseek-v3").join(f), dir.join(f)).unwrap();
    }
    let llama = std::env::var("FERROSEEK_BENCH_LLAMA_SERVER").ok();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let args = |extra: &[&'static str]| {
        let mut a = vec![
            "--served-model-name",
            "bench",
            "--kv-cache-memory",
            "64MiB",
            "--max-model-len",
            "512",
        ];
        a.extend_from_slice(extra);
        a
    };
    println!("threads: {threads}; one request at a time");
    println!("| file | load from GGUF (s) | load from safetensors, quantized in situ (s) | reading the file (s) | decode, ferroseek (tok/s) | decode, llama.cpp (tok/s) | ratio |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (kind, variable, in_situ) in [
        ("q8_0", "FERROSEEK_BENCH_GGUF_Q8_0", Some("q8_0")),
        ("Q4_K_M", "FERROSEEK_BENCH_GGUF_Q4_K_M", Some("q4_k")),
        ("Q5_K_M", "FERROSEEK_BENCH_GGUF_Q5_K_M", None),
    ] {
        let Ok(file) = std::env::var(variable) else {
            println!(
                "| {kind} | not run: set {variable} (scripts/bench_model_gguf.sh) | | | | | |"
            );
            continue;
        };
        let file = PathBuf::from(file);
        let read = read_once(&file);
        let (from_gguf, server) = timed_start(&rt, || ferroseek(&file, &args(&[])));
        let ours = decode_rate(&rt, &server);
        drop(server);
        let from_safetensors = match in_situ {
            Some(in_situ) => {
                let (seconds, server) =
                    timed_start(&rt, || ferroseek(&dir, &args(&["--quantize", in_situ])));
                drop(server);
                format!("{seconds:.2}")
            }
            None => "-".to_string(),
        };
        let (theirs, ratio) = match &llama {
            Some(binary) => {
                let server = llama_cpp(binary, file.to_str().unwrap(), threads, CONTEXT);
                let theirs = decode_rate(&rt, &server);
                (format!("{theirs:.1}"), format!("{:.2}x", ours / theirs))
            }
            None => (
                "not run: set FERROSEEK_BENCH_LLAMA_SERVER".to_string(),
                String::new(),
            ),
        };
        println!(
            "| {kind} | {from_gguf:.2} | {from_safetensors} | {read:.2} | {ours:.1} | {theirs} | {ratio} |"
        );
    }
}
