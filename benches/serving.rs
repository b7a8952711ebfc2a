//! Serving benchmark against the physical limit.
//!
//! `cargo bench -p ferroseek --bench serving`
//!
//! In one run, on the benchmark model (DeepSeek-V2-Lite's architecture at
//! 265M random parameters, written once into `target/bench-models/` from a
//! bf16 checkpoint), for f32, the bf16 checkpoint as `--dtype auto` holds
//! it on CPU (bf16 weights, f32 compute), q8_0 and q4_k:
//! - in process, in `ROUNDS` rounds that each measure this machine's memory
//!   read bandwidth (a STREAM-like parallel sum over a fresh 1 GiB buffer,
//!   best of 6) and then, for every format in turn, the prefill of a
//!   128-token prompt and 32 single-stream decode steps after it. A shared
//!   machine's neighbours slow a measurement down for seconds at a time, so
//!   the rounds spread every format over the whole run; the best round of
//!   each format counts (the median round is printed too);
//! - the roofline: the median bandwidth reading / bytes read per token, the
//!   bytes counted from the weights one token actually reads in the form
//!   they are held (attention, dense layer, router, shared and
//!   `num_experts_per_tok` routed experts, embedding row, lm_head) plus the
//!   sequence's latent cache rows. The median, not the best reading: on a
//!   2-vCPU EPYC VM the probe reads 33-37 GB/s, but now and then, for a
//!   second or two, 53-64 (and a buffer kept and read for a minute reads
//!   so most of the time); decode steps timed beside such readings were
//!   mostly no faster, though f32's best round twice read its weights at
//!   40 GB/s.
//!   The best reading would make one such moment every format's limit; the
//!   fraction against it is printed too (last column), and the truth lies
//!   between the two;
//! - aggregate decode tokens/s with 1, 4, 8 and 16 concurrent streams
//!   through the real HTTP server (the `ferroseek` binary, streaming
//!   `/v1/completions` with 16-token id prompts, 64 tokens each, greedy,
//!   `ignore_eos`): completion tokens over the wall time of the whole
//!   batch, prompts included, best of `HTTP_RUNS`.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use common::{wait_ready, Server};

use candle_core::{DType, Device};
use ferroseek_model::testing::{bench_checkpoint, read_bandwidth_gbps};
use ferroseek_model::{
    resolve_model, Batch, DeepSeekModel, HubOptions, LatentCache, LoadOptions, LogitsRows, SeqInput,
};
use serde_json::{json, Value};

const PREFILL: usize = 128;
/// Decode steps timed per round, after the prompt.
const DECODE_STEPS: usize = 32;
const ROUNDS: usize = 7;
const HTTP_RUNS: usize = 3;

struct Format {
    name: &'static str,
    dtype: &'static str,
    quantize: &'static str,
}

const FORMATS: [Format; 4] = [
    Format {
        name: "f32",
        dtype: "f32",
        quantize: "none",
    },
    Format {
        name: "bf16 checkpoint (auto)",
        dtype: "auto",
        quantize: "none",
    },
    Format {
        name: "q8_0",
        dtype: "f32",
        quantize: "q8_0",
    },
    Format {
        name: "q4_k",
        dtype: "f32",
        quantize: "q4_k",
    },
];

/// One format's model, loaded in process, with a sequence's cache.
struct InProcess {
    model: DeepSeekModel,
    cache: LatentCache,
}

impl InProcess {
    fn load(dir: &Path, f: &Format) -> Self {
        let files = resolve_model(dir.to_str().unwrap(), &HubOptions::from_env(None)).unwrap();
        let model = DeepSeekModel::load(
            &files,
            &LoadOptions {
                dtype: f.dtype.parse().unwrap(),
                quantize: f.quantize.parse().unwrap(),
                device: Device::Cpu,
                ..Default::default()
            },
        )
        .unwrap();
        let cache = LatentCache::new(model.config(), 16, 16).unwrap();
        let mut this = InProcess { model, cache };
        this.round(); // warm-up
        this
    }

    fn step(&mut self, tokens: Vec<u32>, num_cached: usize) {
        let batch = Batch {
            seqs: vec![SeqInput {
                tokens,
                num_cached,
                block_table: (0..16).collect(),
                logits: LogitsRows::Last,
            }],
        };
        self.model.forward(&batch, &mut self.cache).unwrap();
    }

    /// (prefill tokens/s, decode tokens/s) of one prompt and the steps after it.
    fn round(&mut self) -> (f64, f64) {
        let prompt: Vec<u32> = (0..PREFILL as u32).map(|t| (t * 7919) % 7900 + 2).collect();
        let t = Instant::now();
        self.step(prompt, 0);
        let prefill = PREFILL as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        for i in 0..DECODE_STEPS {
            self.step(vec![5], PREFILL + i);
        }
        (prefill, DECODE_STEPS as f64 / t.elapsed().as_secs_f64())
    }

    /// Bytes one decode step reads: the weights, and on average the cache
    /// rows of the context.
    fn bytes_per_token(&self) -> usize {
        let cfg = self.model.config();
        let context = PREFILL + DECODE_STEPS / 2;
        let cache_bytes = context * cfg.latent_width() * cfg.num_hidden_layers * 4;
        self.model.decode_weight_bytes() + cache_bytes
    }
}

/// (best, median) of `values`.
fn best_and_median(mut values: Vec<f64>) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    (values[values.len() - 1], values[values.len() / 2])
}

fn start_server(dir: &Path, f: &Format) -> Server {
    common::ferroseek(
        dir,
        &[
            "--kv-cache-memory",
            "256MiB",
            "--served-model-name",
            "bench",
            "--dtype",
            f.dtype,
            "--quantize",
            f.quantize,
        ],
    )
}

/// Aggregate completion tokens/s of `streams` concurrent streaming requests.
async fn through_http(client: &reqwest::Client, base: &str, streams: usize) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..streams)
        .map(|i| {
            let client = client.clone();
            let url = format!("{base}/v1/completions");
            let prompt: Vec<u32> = (0..16u32)
                .map(|t| (t * 131 + i as u32 * 977) % 3900 + 4)
                .collect();
            tokio::spawn(async move {
                let body = json!({
                    "model": "bench", "prompt": prompt, "max_tokens": 64,
                    "temperature": 0, "ignore_eos": true, "stream": true,
                    "stream_options": {"include_usage": true}
                });
                let text = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                text.lines()
                    .rev()
                    .filter_map(|l| l.strip_prefix("data: "))
                    .filter_map(|d| serde_json::from_str::<Value>(d).ok())
                    .find_map(|v| v["usage"]["completion_tokens"].as_u64())
                    .expect("a usage chunk")
            })
        })
        .collect();
    let mut tokens = 0;
    for t in tasks {
        tokens += t.await.unwrap();
    }
    tokens as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    // Both pools sized as the server sizes them.
    let threads = ferroseek_model::set_threads(None);
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    let dir = bench_checkpoint(&cache, DType::BF16).expect("writing the bench checkpoint");
    // The server needs a tokenizer; the default model's serves (ids it does
    // not know decode to nothing, and the benchmark reads token counts).
    let tok = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/tiny-deepseek-v3");
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tok.join(f), dir.join(f)).unwrap();
    }
    let mut models: Vec<InProcess> = FORMATS.iter().map(|f| InProcess::load(&dir, f)).collect();
    let mut bandwidths = Vec::new();
    let mut measured: Vec<Vec<(f64, f64)>> = vec![Vec::new(); FORMATS.len()];
    for _ in 0..ROUNDS {
        bandwidths.push(read_bandwidth_gbps());
        for (m, rounds) in models.iter_mut().zip(&mut measured) {
            rounds.push(m.round());
        }
    }
    let bytes: Vec<usize> = models.iter().map(InProcess::bytes_per_token).collect();
    drop(models);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut http = Vec::new();
    for f in &FORMATS {
        let server = start_server(&dir, f);
        http.push(rt.block_on(async {
            wait_ready(&client, &server.base).await;
            through_http(&client, &server.base, 1).await; // warm-up
            let mut rates = Vec::new();
            for c in [1, 4, 8, 16] {
                let mut best = 0f64;
                for _ in 0..HTTP_RUNS {
                    best = best.max(through_http(&client, &server.base, c).await);
                }
                rates.push(best);
            }
            rates
        }));
    }
    let lowest = bandwidths.iter().copied().fold(f64::INFINITY, f64::min);
    let (bandwidth, bandwidth_median) = best_and_median(bandwidths);
    println!(
        "threads: {threads}; read bandwidth (parallel sum over 1 GiB, one reading a round): median {bandwidth_median:.1} GB/s, lowest {lowest:.1}, best {bandwidth:.1}; best and median of {ROUNDS} rounds"
    );
    println!("| weights | prefill 128 tok/s | decode tok/s (median) | MB read/token | roofline tok/s | of roofline (median) | HTTP 1 | HTTP 4 | HTTP 8 | HTTP 16 | of best-reading roofline |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (((f, rounds), bytes), rates) in FORMATS.iter().zip(measured).zip(bytes).zip(http) {
        let (prefill, _) = best_and_median(rounds.iter().map(|r| r.0).collect());
        let (decode, decode_median) = best_and_median(rounds.iter().map(|r| r.1).collect());
        let roofline = bandwidth_median * 1e9 / bytes as f64;
        let best_reading_roofline = bandwidth * 1e9 / bytes as f64;
        println!(
            "| {} | {prefill:.0} | {decode:.1} ({decode_median:.1}) | {:.0} | {roofline:.1} | {:.0}% ({:.0}%) | {:.1} | {:.1} | {:.1} | {:.1} | {:.0}% |",
            f.name,
            bytes as f64 / 1e6,
            100.0 * decode / roofline,
            100.0 * decode_median / roofline,
            rates[0],
            rates[1],
            rates[2],
            rates[3],
            100.0 * decode / best_reading_roofline
        );
    }
}
