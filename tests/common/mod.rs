//! Starts the real `ferroseek` binary on a free port (`--port 0`; the port
//! is read from its "listening on" log line) and waits until `/health` says
//! it is ready. Unless a test names a model, the server runs the random test
//! model `models/tiny-deepseek-v3` (served as `tiny-deepseek-v3`), which
//! exercises every path of the template, tokenizer and model code;
//! [`Server::start_embedded`] runs the embedded default model instead.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The random test model's folder.
pub fn test_model_dir() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-deepseek-v3").to_string()
}

pub struct Server {
    child: Child,
    pub base: String,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// The server with small test limits (a 32 MiB cache unless `extra`
    /// sets `--kv-cache-memory`), on the test model unless `extra` names a
    /// `--model`, plus `extra` flags.
    pub fn start(extra: &[&str]) -> Server {
        Self::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let test_model = test_model_dir();
        let mut args = vec![];
        if !extra.contains(&"--model") {
            args.extend(["--model", test_model.as_str()]);
            if !extra.contains(&"--served-model-name") {
                args.extend(["--served-model-name", "tiny-deepseek-v3"]);
            }
        }
        args.extend(extra);
        Self::spawn(&args, env)
    }

    /// The server on the embedded default model (no `--model`), with the
    /// test limits of [`Server::start`].
    pub fn start_embedded(extra: &[&str]) -> Server {
        Self::spawn(extra, &[])
    }

    fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ferroseek"));
        cmd.args(["serve", "--port", "0"]);
        if !extra.contains(&"--kv-cache-memory") {
            cmd.args(["--kv-cache-memory", "32MiB"]);
        }
        cmd.args(extra)
            .env_remove("FERROSEEK_API_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the ferroseek binary starts");
        let stderr = child.stderr.take().expect("stderr is piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(at) = line.find("listening on http://") {
                    let rest = &line[at + "listening on ".len()..];
                    let url: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"')
                        .collect();
                    let _ = tx.send(url);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let base = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not log its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let mut server = Server { child, base, logs };
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = format!("{}/health", self.base);
        loop {
            if blocking_get_status(&url) == Some(200) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited with {status}; logs:\n{}", self.logs());
            }
            if Instant::now() > deadline {
                panic!("the server was not ready in time; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The value of an unlabelled metric on `/metrics`.
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> f64 {
        let text = client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
            .parse()
            .unwrap()
    }

    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// The logs once a line satisfies `wanted`, or as they are after 10 s:
    /// lines reach the test through a reader thread, after the server has
    /// already answered the request that logged them.
    #[allow(dead_code)]
    pub fn logs_once(&self, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let logs = self.logs();
            if logs.lines().any(&wanted) || Instant::now() > deadline {
                return logs;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The status and JSON answer of a JSON POST to `path`.
    #[allow(dead_code)]
    pub async fn post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        post_url(&self.url(path), body).await
    }

    /// The JSON answer to a JSON POST to `path`.
    #[allow(dead_code)]
    pub async fn post_json(&self, path: &str, body: &serde_json::Value) -> serde_json::Value {
        self.post(path, body.clone()).await.1
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process at once (SIGKILL), as a crash or the OOM killer would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!(
                    "the server did not exit after SIGTERM; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The exit status, once the process exits by itself within `within`.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("the server did not exit in time; logs:\n{}", self.logs());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The status and JSON answer of a JSON POST to `url`.
pub async fn post_url(url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// A GET's status over a plain TCP socket (no async runtime needed).
fn blocking_get_status(url: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://")?;
    let (host, path) = rest.split_at(rest.find('/')?);
    let mut stream = std::net::TcpStream::connect(host).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = String::new();
    stream.read_to_string(&mut head).ok()?;
    head.split_whitespace().nth(1)?.parse().ok()
}

/// The `data:` payloads of an SSE body, checking the framing: every event
/// is exactly one `data: ` line followed by a blank line.
pub fn sse_payloads(body: &str) -> Vec<String> {
    assert!(
        body.ends_with("\n\n"),
        "an SSE body ends with a blank line: {body:?}"
    );
    body.trim_end_matches('\n')
        .split("\n\n")
        .map(|event| {
            assert!(!event.contains('\n'), "one line per event: {event:?}");
            event
                .strip_prefix("data: ")
                .unwrap_or_else(|| panic!("event is not `data: `: {event:?}"))
                .to_string()
        })
        .collect()
}
