//! What the HTTP benchmarks share: a server process, started and waited
//! for. Each bench uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}
