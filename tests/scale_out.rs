//! Scale-out: two ferroseek replicas behind a real nginx running the SAME
//! configuration file as docker/compose.scale.yaml (docker/nginx.conf), with
//! only the upstream addresses and the listen port substituted.
//!
//! Concurrent streaming chat requests through nginx must each arrive whole
//! and in order (the text of the same greedy request asked of a replica
//! directly), both replicas must serve some, and after one replica is
//! stopped every new request must still succeed. A replica killed outright
//! (`kill -9`) in the middle of a load run fails only the requests it was
//! serving, each with an error its client sees; nothing hangs, and new
//! requests go to the survivor.
//!
//! Needs Debian's `nginx` (`.ci/run` installs it and sets
//! `FERROSEEK_REQUIRE_NGINX=1`); without it the test says so and passes
//! only when nginx is not required.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{sse_payloads, Server};
use serde_json::{json, Value};

fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/bin/nginx", "/usr/local/sbin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// docker/nginx.conf with `upstreams` for the compose service and `port` to
/// listen on; nothing else changes.
fn config_for(upstreams: &[String], port: u16) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docker/nginx.conf");
    let conf = std::fs::read_to_string(&path).unwrap();
    let server_line = conf
        .lines()
        .find(|l| l.trim_start().starts_with("server ferroseek:8000"))
        .expect("docker/nginx.conf has the compose upstream line")
        .to_string();
    let replicas: Vec<String> = upstreams
        .iter()
        .map(|u| server_line.replace("ferroseek:8000", u))
        .collect();
    assert!(conf.contains("listen 8000;"));
    conf.replace(&server_line, &replicas.join("\n"))
        .replace("listen 8000;", &format!("listen 127.0.0.1:{port};"))
}

fn start_nginx(binary: &PathBuf, upstreams: &[String]) -> (Nginx, String) {
    let port = free_port();
    // One folder per nginx: the tests of this file run at once.
    let dir = std::env::temp_dir().join(format!("ferroseek-nginx-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nginx.conf"), config_for(upstreams, port)).unwrap();
    let globals = format!(
        "daemon off; pid {0}/nginx.pid; error_log {0}/error.log;",
        dir.display()
    );
    let child = Command::new(binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", &globals])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nginx starts");
    let nginx = Nginx { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not listen in time");
        std::thread::sleep(Duration::from_millis(50));
    }
    (nginx, format!("http://127.0.0.1:{port}"))
}

fn chat(i: usize, stream: bool) -> Value {
    json!({
        "model": "tiny-deepseek-v3",
        "messages": [{"role": "user", "content": format!("Tell me about number {i}.")}],
        "max_tokens": 24,
        "temperature": 0,
        "stream": stream,
    })
}

/// The streamed reply's text, checking the chunks arrive in order: the
/// role first, then content, the finish reason on the last choice chunk,
/// `[DONE]` at the very end.
fn streamed_text(body: &str) -> String {
    let payloads = sse_payloads(body);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let id = chunks[0]["id"].clone();
    let mut text = String::new();
    for (n, c) in chunks.iter().enumerate() {
        assert_eq!(c["id"], id, "one id per stream");
        assert_eq!(c["object"], "chat.completion.chunk");
        let choice = &c["choices"][0];
        if let Some(t) = choice["delta"]["content"].as_str() {
            text.push_str(t);
        }
        let last = n == chunks.len() - 1;
        assert_eq!(
            choice["finish_reason"].is_string(),
            last,
            "the finish reason comes with the last chunk only"
        );
    }
    text
}

async fn metric(client: &reqwest::Client, base: &str, name: &str) -> f64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_behind_nginx_stream_whole_and_survive_a_stopped_replica() {
    let Some(binary) = nginx_binary() else {
        assert!(
            std::env::var("FERROSEEK_REQUIRE_NGINX").as_deref() != Ok("1"),
            "nginx is required (FERROSEEK_REQUIRE_NGINX=1) but not installed"
        );
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx)");
        return;
    };
    let a = Server::start(&[]);
    let mut b = Server::start(&[]);
    let upstreams: Vec<String> = [&a, &b]
        .iter()
        .map(|s| s.base.trim_start_matches("http://").to_string())
        .collect();
    let (_nginx, front) = start_nginx(&binary, &upstreams);
    let client = reqwest::Client::new();

    // What each greedy request says, asked of one replica directly.
    let mut expected = Vec::new();
    for i in 0..12 {
        let reply: Value = client
            .post(a.url("/v1/chat/completions"))
            .json(&chat(i, false))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        expected.push(
            reply["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let served_before = [
        metric(&client, &a.base, "ferroseek_generation_tokens_total").await,
        metric(&client, &b.base, "ferroseek_generation_tokens_total").await,
    ];

    // Concurrent streams through nginx.
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let client = client.clone();
            let url = format!("{front}/v1/chat/completions");
            tokio::spawn(async move {
                let response = client.post(url).json(&chat(i, true)).send().await.unwrap();
                assert_eq!(response.status(), 200);
                streamed_text(&response.text().await.unwrap())
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), expected[i], "stream {i} through nginx");
    }
    let served_after = [
        metric(&client, &a.base, "ferroseek_generation_tokens_total").await,
        metric(&client, &b.base, "ferroseek_generation_tokens_total").await,
    ];
    assert!(
        served_after[0] > served_before[0] && served_after[1] > served_before[1],
        "both replicas served: before {served_before:?}, after {served_after:?}"
    );

    // One replica stops; new requests all land on the other.
    assert!(b.terminate().success());
    for (i, want) in expected.iter().enumerate().take(8) {
        let response = client
            .post(format!("{front}/v1/chat/completions"))
            .json(&chat(i, i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "request {i} after a replica stopped"
        );
        let body = response.text().await.unwrap();
        let text = if i % 2 == 0 {
            streamed_text(&body)
        } else {
            let v: Value = serde_json::from_str(&body).unwrap();
            v["choices"][0]["message"]["content"]
                .as_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(&text, want);
    }
}

/// How one long request through nginx ended.
#[derive(Debug, PartialEq)]
enum Ending {
    /// The whole answer: a `finish_reason` and, streamed, `[DONE]`.
    Whole,
    /// An error the client sees: a non-200 status, or a stream cut short.
    Failed,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_fails_only_its_requests_and_the_survivor_serves() {
    let Some(binary) = nginx_binary() else {
        assert!(
            std::env::var("FERROSEEK_REQUIRE_NGINX").as_deref() != Ok("1"),
            "nginx is required (FERROSEEK_REQUIRE_NGINX=1) but not installed"
        );
        eprintln!("SKIPPED: nginx is not installed (apt-get install nginx)");
        return;
    };
    let a = Server::start(&[]);
    let mut b = Server::start(&[]);
    let upstreams: Vec<String> = [&a, &b]
        .iter()
        .map(|s| s.base.trim_start_matches("http://").to_string())
        .collect();
    let (_nginx, front) = start_nginx(&binary, &upstreams);
    let client = reqwest::Client::new();

    // Long requests on both replicas: streamed and not, past eos.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = client.clone();
            let url = format!("{front}/v1/chat/completions");
            let stream = i % 2 == 0;
            let mut body = chat(i, stream);
            body["max_tokens"] = json!(2000);
            body["ignore_eos"] = json!(true);
            tokio::spawn(async move {
                let Ok(response) = client.post(url).json(&body).send().await else {
                    return Ending::Failed;
                };
                if response.status() != 200 {
                    return Ending::Failed;
                }
                let Ok(text) = response.text().await else {
                    return Ending::Failed;
                };
                let whole = if stream {
                    let payloads = sse_payloads(&text);
                    payloads.last().map(String::as_str) == Some("[DONE]")
                        && payloads
                            .iter()
                            .any(|p| p.contains("\"finish_reason\":\"length\""))
                } else {
                    serde_json::from_str::<Value>(&text)
                        .is_ok_and(|v| v["choices"][0]["finish_reason"] == "length")
                };
                if whole {
                    Ending::Whole
                } else {
                    Ending::Failed
                }
            })
        })
        .collect();
    // Kill b once both replicas are busy.
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&client, &a.base, "ferroseek_num_requests_running").await == 0.0
        || metric(&client, &b.base, "ferroseek_num_requests_running").await == 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the load never reached both replicas"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.kill();

    let mut endings = Vec::new();
    for task in tasks {
        let ending = tokio::time::timeout(Duration::from_secs(180), task)
            .await
            .expect("a request through nginx hung after a replica died")
            .unwrap();
        endings.push(ending);
    }
    let failed = endings.iter().filter(|e| **e == Ending::Failed).count();
    assert!(
        failed > 0,
        "the killed replica's requests failed: {endings:?}"
    );
    assert!(
        failed < endings.len(),
        "the survivor's requests finished: {endings:?}"
    );

    // New requests all go to the survivor.
    for i in 0..6 {
        let response = client
            .post(format!("{front}/v1/chat/completions"))
            .json(&chat(i, i % 2 == 0))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            200,
            "request {i} after a replica was killed"
        );
        let body = response.text().await.unwrap();
        if i % 2 == 0 {
            streamed_text(&body);
        }
    }
}
