//! Soak: the real binary under a long mix of every kind of request at
//! once, with a cache small enough that sequences are preempted and
//! recomputed: chat and completions, streamed and not, `n` > 1,
//! log-probabilities, stop strings, long prompts, 30% of streams cancelled
//! mid-way and 10% invalid requests, over raw HTTP and, beside it, through
//! the official Python client (`tests/python/soak_client.py`, when
//! `FERROSEEK_PYTHON` has `openai`). It passes when no response is a 5xx,
//! every valid request that was not cancelled ends with a `finish_reason`,
//! the KV blocks in use return to 0, the same process served it all, and its
//! resident memory, read when idle after each of 5 rounds, does not grow
//! after the warm-up round (see [`soak`]). It prints p50/p99 time to first
//! token and per-token latency.
//!
//! Two more tests load the server otherwise: SIGTERM in the middle of 32
//! streams lets every one finish, refuses new requests and exits 0; and
//! 16 clients asking of a server with room for 8 get 429s at once (with
//! `Retry-After`) while the admitted requests finish in bounded time and
//! memory stays flat.
//!
//! The test in CI runs 1,000 requests on the test model. The long soak is
//! the ignored test: `FERROSEEK_SOAK_REQUESTS=2000 cargo test --release
//! --test soak -- --ignored --nocapture` (same mix, on the benchmark-shaped
//! model, written to `target/bench-models/` on first use).

mod common;

use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const CONCURRENCY: usize = 32;
/// The soak runs in this many rounds, with the engine idle between them.
const ROUNDS: usize = 5;
/// How far the idle memory of a server that leaks nothing swings between
/// rounds, at most (see [`soak`]).
const IDLE_SWING_KIB: i64 = 8 * 1024;

/// What one request was and how it went.
#[derive(Debug, Default)]
struct Outcome {
    label: String,
    status: u16,
    valid: bool,
    cancelled: bool,
    /// Every choice ended with a `finish_reason`.
    finished: bool,
    ttft: Option<Duration>,
    /// Time between consecutive content chunks of a stream.
    gaps: Vec<Duration>,
}

/// The `i`th request of the mix: (path, body, valid, stream, cancel after
/// this many chunks).
fn request(i: usize, rng: &mut StdRng) -> (&'static str, Value, bool, bool, Option<usize>) {
    let long = "The lighthouse keeper wrote down the weather every hour of every day. ".repeat(60);
    let prompt = if rng.random_bool(0.1) {
        long
    } else {
        format!("Request {i}: tell me about the sea.")
    };
    let max_tokens = rng.random_range(1..48);
    if rng.random_bool(0.1) {
        let bad = [
            json!({"messages": [{"role": "user", "content": "x"}], "temperature": 7}),
            json!({"messages": []}),
            json!({"messages": [{"role": "user", "content": "x"}], "n": 0}),
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}),
        ];
        let body = bad[rng.random_range(0..bad.len())].clone();
        return ("/v1/chat/completions", body, false, false, None);
    }
    let stream = rng.random_bool(0.45);
    let cancel = (stream && rng.random_bool(0.3)).then(|| rng.random_range(1..5));
    let n = if rng.random_bool(0.2) { 2 } else { 1 };
    let mut body = if rng.random_bool(0.6) {
        let mut b = json!({"messages": [{"role": "user", "content": prompt}],
                           "max_tokens": max_tokens, "n": n});
        if rng.random_bool(0.3) {
            b["logprobs"] = json!(true);
            b["top_logprobs"] = json!(2);
        }
        b
    } else {
        let mut b = json!({"prompt": prompt, "max_tokens": max_tokens, "n": n});
        if rng.random_bool(0.3) {
            b["logprobs"] = json!(2);
        }
        b
    };
    if rng.random_bool(0.3) {
        body["stop"] = json!(["the", "\n\n"]);
    }
    if rng.random_bool(0.5) {
        body["seed"] = json!(i);
    }
    if stream {
        body["stream"] = json!(true);
    }
    let path = if body.get("messages").is_some() {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    (path, body, true, stream, cancel)
}

async fn run_one(
    client: &reqwest::Client,
    server: &Server,
    (path, body, valid, stream, cancel): (&'static str, Value, bool, bool, Option<usize>),
) -> Outcome {
    let n = body["n"].as_u64().unwrap_or(1) as usize;
    let mut out = Outcome {
        label: format!("{path} {body}").chars().take(300).collect(),
        valid,
        ..Default::default()
    };
    let start = Instant::now();
    let resp = match client.post(server.url(path)).json(&body).send().await {
        Ok(r) => r,
        Err(e) => panic!("{}: transport error {e}", out.label),
    };
    out.status = resp.status().as_u16();
    if !stream || out.status != 200 {
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        out.finished = v["choices"]
            .as_array()
            .is_some_and(|cs| cs.len() == n && cs.iter().all(|c| c["finish_reason"].is_string()));
        return out;
    }
    let mut chunks = resp.bytes_stream();
    let mut buffer = String::new();
    let mut finishes = 0;
    let mut seen = 0;
    let mut last = None;
    while let Some(piece) = chunks.next().await {
        let Ok(piece) = piece else { break };
        buffer.push_str(&String::from_utf8_lossy(&piece));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                continue;
            }
            let chunk: Value = serde_json::from_str(data).unwrap();
            let now = Instant::now();
            if out.ttft.is_none() {
                out.ttft = Some(now - start);
            } else if let Some(prev) = last {
                out.gaps.push(now - prev);
            }
            last = Some(now);
            for c in chunk["choices"].as_array().into_iter().flatten() {
                if c["finish_reason"].is_string() {
                    finishes += 1;
                }
            }
            seen += 1;
        }
        if cancel.is_some_and(|k| seen >= k) {
            // Dropping the response closes the connection mid-stream.
            out.cancelled = true;
            return out;
        }
    }
    out.finished = finishes == n;
    out
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Runs `requests` at [`CONCURRENCY`], waits until the engine is idle (no
/// block in use, nothing running or waiting) and returns the outcomes with
/// the resident memory then.
async fn round(
    client: &reqwest::Client,
    server: &Server,
    requests: Vec<(&'static str, Value, bool, bool, Option<usize>)>,
    also: Option<std::thread::JoinHandle<()>>,
) -> (Vec<Outcome>, u64) {
    let outcomes: Vec<Outcome> = futures_util::stream::iter(requests)
        .map(|r| run_one(client, server, r))
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    if let Some(also) = also {
        tokio::task::spawn_blocking(move || also.join().unwrap())
            .await
            .unwrap();
    }
    // Every block returns once the cancelled streams are noticed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let used = server
            .metric(client, "ferroseek_kv_cache_blocks_used")
            .await;
        let running = server
            .metric(client, "ferroseek_num_requests_running")
            .await;
        let waiting = server
            .metric(client, "ferroseek_num_requests_waiting")
            .await;
        if used == 0.0 && running == 0.0 && waiting == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocks used {used}, running {running}, waiting {waiting} after a round of the soak"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The engine gives freed memory back after a second idle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    (outcomes, rss_kib(server.pid()))
}

/// `total` requests of the mix in [`ROUNDS`] rounds, the first beside
/// `also` (the official client's run). Memory is compared between idle
/// points, after the engine has given freed memory back: sampled under
/// load it swings by 10% with the allocator's high-water marks. The first
/// round is a warm-up (caches and free lists grow to the mix). After it,
/// the idle memory of the test model's server holds level, over 4,500
/// requests as over 1,000, but for a swing of up to 7 MiB: one thread's
/// arena holds about 6 MiB live at some idle points and not at others.
/// A leak grows it with every round. The least of the last two rounds
/// must be less than [`IDLE_SWING_KIB`] above the most of the two before:
/// with rounds of 200 requests that catches a leak of 40 KiB per request.
async fn soak(server: &Server, total: usize, also: Option<std::thread::JoinHandle<()>>) {
    let client = reqwest::Client::new();
    let mut rng = StdRng::seed_from_u64(2026);
    let mut requests: Vec<_> = (0..total).map(|i| request(i, &mut rng)).collect();
    let per_round = total.div_ceil(ROUNDS);
    let mut outcomes = Vec::with_capacity(total);
    let mut idle = Vec::new();
    let mut also = also;
    while !requests.is_empty() {
        let rest = requests.split_off(per_round.min(requests.len()));
        let (done, rss) = round(&client, server, requests, also.take()).await;
        outcomes.extend(done);
        idle.push(rss);
        requests = rest;
    }
    let preemptions = server.metric(&client, "ferroseek_preemptions_total").await;

    let mut failures = Vec::new();
    for o in &outcomes {
        if o.status >= 500 {
            failures.push(format!("{} answered {}", o.label, o.status));
        } else if o.valid && o.status != 200 {
            failures.push(format!("valid {} answered {}", o.label, o.status));
        } else if !o.valid && !(400..500).contains(&o.status) {
            failures.push(format!("invalid {} answered {}", o.label, o.status));
        } else if o.valid && !o.cancelled && !o.finished {
            failures.push(format!("{} ended without a finish_reason", o.label));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {total} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "the engine is still serving");
    // The first round is the warm-up; the last two are held against the
    // rounds between. One reading may be high by chance; a leak raises
    // both.
    let later = idle.len() - 2;
    let before = idle[1..later].iter().copied().max().unwrap();
    let after = idle[later..].iter().copied().min().unwrap();
    let growth_kib = after as i64 - before as i64;

    let mut ttft: Vec<Duration> = outcomes.iter().filter_map(|o| o.ttft).collect();
    let mut gaps: Vec<Duration> = outcomes.iter().flat_map(|o| o.gaps.clone()).collect();
    let cancelled = outcomes.iter().filter(|o| o.cancelled).count();
    let invalid = outcomes.iter().filter(|o| !o.valid).count();
    println!(
        "soak: {total} requests at concurrency {CONCURRENCY} ({cancelled} streams cancelled, \
         {invalid} invalid), {preemptions} preemptions; time to first token p50 {:?} p99 {:?}; \
         per token p50 {:?} p99 {:?}; resident memory when idle after each round {idle:?} KiB \
         ({growth_kib:+} KiB from the most after the warm-up to the least of the last two)",
        percentile(&mut ttft, 0.5),
        percentile(&mut ttft, 0.99),
        percentile(&mut gaps, 0.5),
        percentile(&mut gaps, 0.99),
    );
    assert!(
        preemptions > 0.0,
        "the cache was never short: no preemption"
    );
    assert!(
        growth_kib < IDLE_SWING_KIB,
        "resident memory when idle grew {growth_kib} KiB in the last two rounds: {idle:?} KiB"
    );
}

/// The Python to run the official client with (`FERROSEEK_PYTHON`, with
/// `openai`); `None` skips that part, unless
/// `FERROSEEK_REQUIRE_PYTHON_CLIENT=1`.
fn python() -> Option<String> {
    let required = std::env::var("FERROSEEK_REQUIRE_PYTHON_CLIENT").is_ok_and(|v| v == "1");
    let found = std::env::var("FERROSEEK_PYTHON").ok().filter(|p| {
        !p.is_empty()
            && std::process::Command::new(p)
                .args(["-c", "import openai"])
                .status()
                .is_ok_and(|s| s.success())
    });
    assert!(
        found.is_some() || !required,
        "FERROSEEK_REQUIRE_PYTHON_CLIENT=1 but FERROSEEK_PYTHON has no `openai`"
    );
    if found.is_none() {
        eprintln!("SKIPPED: the official client's part of the soak (set FERROSEEK_PYTHON)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_load_leaks_nothing_and_never_fails() {
    // 3 MiB holds about 2,400 tokens of the test model's cache: far
    // less than 32 concurrent requests want, so sequences are preempted.
    let server = Server::start(&["--kv-cache-memory", "3MiB", "--max-num-seqs", "32"]);
    // The official Python client adds its own mix beside the raw HTTP
    // one, in the first round.
    let client_run = python().map(|python| {
        let base = server.url("/v1");
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/soak_client.py");
        std::thread::spawn(move || {
            let out = std::process::Command::new(python)
                .args([script, &base, "120"])
                .output()
                .expect("the Python client runs");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("soak client done"),
                "the official client's soak failed:\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            println!("{}", stdout.trim());
        })
    });
    soak(&server, 1000, client_run).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "the long soak: FERROSEEK_SOAK_REQUESTS=2000 cargo test --release --test soak -- --ignored --nocapture"]
async fn long_soak_on_the_benchmark_model() {
    let cache = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/bench-models");
    let dir = ferroseek_model::testing::bench_checkpoint(&cache, candle_core::DType::BF16)
        .expect("writing the bench checkpoint");
    let total = std::env::var("FERROSEEK_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let server = Server::start(&[
        "--model",
        dir.to_str().unwrap(),
        "--quantize",
        "q8_0",
        "--kv-cache-memory",
        "24MiB",
        "--max-num-seqs",
        "32",
    ]);
    soak(&server, total, None).await;
}

/// A stream of `max_tokens` tokens past eos: whether it ended whole
/// (`finish_reason` and `[DONE]`).
async fn whole_stream(client: &reqwest::Client, url: String, i: usize) -> bool {
    let body = json!({"prompt": format!("Story {i}:"), "max_tokens": 60, "ignore_eos": true,
                      "stream": true});
    let Ok(resp) = client.post(url).json(&body).send().await else {
        return false;
    };
    if resp.status() != 200 {
        return false;
    }
    let text = resp.text().await.unwrap_or_default();
    text.ends_with("data: [DONE]\n\n") && text.contains(r#""finish_reason":"length""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_finishes_what_runs_refuses_the_rest_and_exits_zero() {
    let server = Server::start(&["--kv-cache-memory", "3MiB", "--max-num-seqs", "32"]);
    let client = reqwest::Client::new();
    let url = server.url("/v1/completions");
    let streams: Vec<_> = (0..32)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move { whole_stream(&client, url, i).await })
        })
        .collect();
    // SIGTERM once the load is running.
    let deadline = Instant::now() + Duration::from_secs(30);
    while server
        .metric(&client, "ferroseek_generation_tokens_total")
        .await
        < 64.0
    {
        assert!(Instant::now() < deadline, "the load never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let base = server.base.clone();
    let pid = server.pid();
    let waiter = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.terminate()
    });
    // New requests are refused (closed listener, or 503 while draining).
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = reqwest::Client::new()
        .post(format!("{base}/v1/completions"))
        .json(&json!({"prompt": "late", "max_tokens": 2}))
        .send()
        .await;
    if let Ok(resp) = &late {
        assert_eq!(resp.status(), 503, "a request after SIGTERM (server {pid})");
    }
    let mut whole = 0;
    for s in streams {
        whole += s.await.unwrap() as usize;
    }
    assert_eq!(whole, 32, "every stream running at SIGTERM finished");
    let status = waiter.await.unwrap();
    assert!(status.success(), "exit status {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overload_is_refused_at_once_and_admitted_requests_stay_bounded() {
    // Room for 4 running and 4 queued; 16 clients keep asking. The cache
    // is small, so the warm-up touches all of it: its pages become resident
    // the first time a block is used, which is growth up to its size, not
    // a leak.
    let server = Server::start(&[
        "--max-num-seqs",
        "4",
        "--max-queue",
        "4",
        "--kv-cache-memory",
        "1MiB",
    ]);
    let client = reqwest::Client::new();
    let url = server.url("/v1/completions");
    let started = Instant::now();
    // Resident memory, sampled while the overload lasts.
    let pid = server.pid();
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        loop {
            samples.push(rss_kib(pid));
            tokio::select! {
                _ = &mut stop_rx => return samples,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let clients: Vec<_> = (0..16)
        .map(|c| {
            let (client, url) = (client.clone(), url.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                // Sustained: every client asks without pause for 4 seconds.
                let mut i = 0;
                while started.elapsed() < Duration::from_secs(4) {
                    i += 1;
                    let body = json!({"prompt": format!("Client {c} asks {i}"), "max_tokens": 16,
                                      "ignore_eos": true});
                    let t = Instant::now();
                    let resp = client.post(&url).json(&body).send().await.unwrap();
                    let status = resp.status().as_u16();
                    let retry_after = resp
                        .headers()
                        .get("retry-after")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_string);
                    let body: Value = resp.json().await.unwrap();
                    answers.push((status, t.elapsed(), retry_after, body));
                    if status == 429 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
                answers
            })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.extend(c.await.unwrap());
    }
    let _ = stop_tx.send(());
    let samples = sampler.await.unwrap();
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    let served: Vec<_> = answers.iter().filter(|a| a.0 == 200).collect();
    assert_eq!(
        refused.len() + served.len(),
        answers.len(),
        "only 200s and 429s"
    );
    assert!(
        !refused.is_empty(),
        "twice the capacity was refused in part"
    );
    assert!(
        served.len() >= 16,
        "the engine kept serving: {} served",
        served.len()
    );
    for (_, took, retry_after, body) in &refused {
        assert_eq!(retry_after.as_deref(), Some("1"));
        assert_eq!(body["error"]["type"], "rate_limit_error");
        assert!(
            *took < Duration::from_secs(2),
            "a 429 came at once, not after {took:?}"
        );
    }
    let slowest = served.iter().map(|a| a.1).max().unwrap();
    assert!(
        slowest < Duration::from_secs(60),
        "an admitted request took {slowest:?}"
    );
    for (_, _, _, body) in &served {
        assert_eq!(body["choices"][0]["finish_reason"], "length");
    }
    // Memory stays flat: the end is within 5% of the most held in the
    // second quarter of the overload (the first warms the server up).
    let quarter = samples.len() / 4;
    let second_quarter = samples[quarter..2 * quarter]
        .iter()
        .max()
        .copied()
        .unwrap_or(0);
    let end = rss_kib(pid);
    let growth = end as f64 / second_quarter as f64 - 1.0;
    println!(
        "overload: {} served, {} refused in {:?}; slowest admitted {slowest:?}; resident \
         memory at most {second_quarter} KiB in the second quarter, {end} KiB at the end ({:+.1}%)",
        served.len(),
        refused.len(),
        started.elapsed(),
        growth * 100.0
    );
    assert!(
        growth < 0.05,
        "memory grew {:.1}% under overload",
        growth * 100.0
    );
}
