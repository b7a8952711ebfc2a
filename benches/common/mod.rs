//! What the HTTP benchmarks share: a server process, started and waited
//! for. Each bench uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// A server process, killed when dropped, and its address.
pub struct Server {
    pub child: Child,
    pub base: String,
    pub name: &'static str,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command`, reading its log until `find` gives the address it
/// listens on from a line.
pub fn start(name: &'static str, mut command: Command, find: fn(&str) -> Option<String>) -> Server {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{name} starts: {e}"));
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(base) = find(&line) {
                let _ = tx.send(base);
            }
        }
    });
    let base = rx
        .recv_timeout(Duration::from_secs(300))
        .unwrap_or_else(|_| panic!("{name} logs its address"));
    Server { child, base, name }
}

/// The `ferroseek` binary on `model`, with `args` after `serve --port 0
/// --model`, its address read from its log.
pub fn ferroseek(model: &std::path::Path, args: &[&str]) -> Server {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferroseek"));
    command
        .args(["serve", "--port", "0", "--model", model.to_str().unwrap()])
        .args(args)
        .env("RUST_LOG", "info");
    start("ferroseek", command, |line| {
        let at = line.find("listening on http://")?;
        Some(
            line[at + "listening on ".len()..]
                .chars()
                .take_while(|c| !c.is_whitespace() && *c != '"')
                .collect(),
        )
    })
}

/// Waits until `base` answers `/health` with 200.
pub async fn wait_ready(client: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(300);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status() == 200 {
                return;
            }
        }
        // Often enough not to blur a load time of a few tenths.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the server did not become ready");
}

/// llama.cpp's `llama-server` (`binary`) on `gguf`, `threads` threads,
/// one slot of `context` tokens.
pub fn llama_cpp(binary: &str, gguf: &str, threads: usize, context: usize) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut command = Command::new(binary);
    command
        .args([
            "-m",
            gguf,
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
        ])
        .args(["-t", &threads.to_string(), "-tb", &threads.to_string()])
        .args(["-c", &context.to_string(), "-np", "1"])
        // llama.cpp 0c1e570 aborts in its graph split on a q8_0 deepseek2
        // file whose weights it repacks for its CPU kernels; the q8_0 dot
        // products are the same without the repacking.
        .arg("--no-repack");
    let mut server = start("llama.cpp", command, |line| {
        line.contains("listening on http").then(String::new)
    });
    server.base = format!("http://127.0.0.1:{port}");
    server
}

/// A prompt of `n` ids that shares no prefix with another `seed`'s.
pub fn prompt(n: usize, seed: u32) -> Vec<u32> {
    (0..n as u32)
        .map(|t| (t.wrapping_mul(7919) ^ seed.wrapping_mul(104_729)) % 7800 + 100)
        .collect()
}

/// Seconds one request of `prompt` (ids, on `/v1/completions`, greedy,
/// `ignore_eos`) for `max_tokens` tokens takes.
pub async fn completion_seconds(
    client: &reqwest::Client,
    base: &str,
    prompt: &[u32],
    max_tokens: usize,
) -> f64 {
    let body = json!({
        "model": "bench", "prompt": prompt, "max_tokens": max_tokens,
        "temperature": 0, "ignore_eos": true,
    });
    let start = Instant::now();
    let response = client
        .post(format!("{base}/v1/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let reply: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{reply}");
    let generated = reply["usage"]["completion_tokens"].as_u64();
    assert_eq!(generated, Some(max_tokens as u64), "{reply}");
    start.elapsed().as_secs_f64()
}
