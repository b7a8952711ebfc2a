//! Start-up options, overload and shutdown of the real binary: the chat
//! template override, JSON logs with request ids, 429 on a full queue, and
//! the bound on how long SIGTERM waits, and a server whose log reader went
//! away.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;
use serde_json::{json, Value};

fn long_stream(prompt: &str) -> Value {
    json!({"prompt": prompt, "max_tokens": 4000, "ignore_eos": true, "stream": true})
}

#[tokio::test]
async fn chat_template_file_replaces_the_models() {
    let dir = std::env::temp_dir().join(format!("ferroseek-template-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plain.jinja");
    std::fs::write(
        &path,
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}",
    )
    .unwrap();
    let server = Server::start(&["--chat-template", path.to_str().unwrap()]);
    let client = reqwest::Client::new();
    let tokenize = |body: Value| {
        let client = client.clone();
        let url = server.url("/tokenize");
        async move {
            let v: Value = client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["tokens"].clone()
        }
    };
    let from_chat = tokenize(json!({"messages": [{"role": "user", "content": "Hi"}]})).await;
    let from_text =
        tokenize(json!({"prompt": "user: Hi\nassistant:", "add_special_tokens": false})).await;
    assert_eq!(
        from_chat, from_text,
        "the override renders, not the model's template"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_chat_template_file_stops_start_up_with_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args([
            "--port",
            "0",
            "--chat-template",
            "/nonexistent/template.jinja",
        ])
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/template.jinja"), "{stderr}");
}

/// `ferroseek serve` with `args`, to its exit: (exit code, stderr).
fn serve_to_exit(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args(["serve", "--port", "0"])
        .args(args)
        .env_remove("FERROSEEK_DEVICE")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[cfg(not(feature = "cuda"))]
#[test]
fn a_gpu_on_the_cpu_build_stops_start_up_naming_the_fix() {
    for device in ["cuda", "cuda:1"] {
        let (code, stderr) = serve_to_exit(&["--device", device]);
        assert_eq!(code, Some(1), "a start-up error, not a panic: {stderr}");
        assert!(stderr.contains(&format!("`--device {device}")), "{stderr}");
        assert!(stderr.contains("built without CUDA"), "{stderr}");
        assert!(
            stderr.contains("cargo build --release --features cuda"),
            "{stderr}"
        );
        assert!(stderr.contains("--build-arg FEATURES=cuda"), "{stderr}");
        assert!(
            !stderr.contains("listening on"),
            "refused before listening: {stderr}"
        );
    }
}

#[test]
fn an_unknown_device_is_refused_with_the_accepted_forms() {
    for device in ["gpu", "cuda:x"] {
        let (code, stderr) = serve_to_exit(&["--device", device]);
        assert_eq!(code, Some(2), "a usage error: {stderr}");
        assert!(
            stderr.contains(&format!("`{device}` is not a device")),
            "{stderr}"
        );
        for form in ["`cpu`", "`cuda`", "`cuda:N`"] {
            assert!(stderr.contains(form), "names {form}: {stderr}");
        }
    }
}

#[tokio::test]
async fn json_logs_carry_the_request_id() {
    let server = Server::start(&["--log-format", "json"]);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .header("x-request-id", "json-log-42")
        .json(&json!({"prompt": "Hi", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let logs = server.logs();
    let line = logs
        .lines()
        .find(|l| l.contains(r#""message":"completion""#))
        .unwrap_or_else(|| panic!("no completion line in:\n{logs}"));
    let v: Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["span"]["id"], "json-log-42", "{line}");
    assert_eq!(v["level"], "INFO");
}

/// A context past the model's `max_position_embeddings` (4096 for the
/// test model) is served, with a warning naming both; within it, none.
#[test]
fn a_context_past_the_models_positions_is_warned_of() {
    let wanted = |l: &str| l.contains("past the positions the model was made for");
    let past = Server::start(&["--max-model-len", "8192"]);
    let logs = past.logs_once(|l| wanted(l) || l.contains("model ready"));
    let line = logs
        .lines()
        .find(|l| wanted(l))
        .unwrap_or_else(|| panic!("{logs}"));
    assert!(
        line.contains("WARN") && line.contains("8192") && line.contains("4096"),
        "{line}"
    );
    let within = Server::start(&["--max-model-len", "4096"]);
    let logs = within.logs_once(|l| l.contains("model ready"));
    assert!(!logs.lines().any(wanted), "{logs}");
}

#[tokio::test]
async fn a_full_queue_answers_429_at_once() {
    let server = Server::start(&["--max-num-seqs", "1", "--max-queue", "1"]);
    let client = reqwest::Client::new();
    let url = server.url("/v1/completions");
    // One request runs (the only sequence slot)...
    let running = client
        .post(&url)
        .json(&long_stream("a"))
        .send()
        .await
        .unwrap();
    assert_eq!(running.status(), 200);
    let mut running = running.bytes_stream();
    running.next().await.unwrap().unwrap();
    // ...one waits (the whole queue)...
    let waiting = client
        .post(&url)
        .json(&long_stream("b"))
        .send()
        .await
        .unwrap();
    assert_eq!(waiting.status(), 200);
    // ...and the next is refused without waiting.
    let started = Instant::now();
    let refused = client
        .post(&url)
        .json(&long_stream("c"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 429);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["type"], "rate_limit_error");
    drop(running);
    drop(waiting);
}

#[tokio::test]
async fn sigterm_waits_at_most_the_shutdown_timeout() {
    let server = Server::start(&["--shutdown-timeout", "1"]);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&long_stream("Once upon a time"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    let started = Instant::now();
    let (status, server) = tokio::task::spawn_blocking(move || {
        let mut server = server;
        (server.terminate(), server)
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        server.logs().contains("did not finish in time"),
        "the stream outlived the timeout: {}",
        server.logs()
    );
}

#[tokio::test]
async fn quantized_weights_serve() {
    let server = Server::start(&["--quantize", "q8_0"]);
    let resp = reqwest::Client::new()
        .post(server.url("/v1/completions"))
        .json(&json!({"prompt": "Hello", "max_tokens": 3, "ignore_eos": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 3);
    assert!(server.logs().contains("Q8_0"), "{}", server.logs());
}

/// A server whose log reader goes away (a pipe into `head`, a log shipper
/// that died) goes on serving, and SIGTERM still stops it: a log line it
/// cannot write is dropped. (tracing's writer used to report the failed
/// write with `eprintln!`, which panics on a broken stderr, and took the
/// thread that logged with it: the signal handler's, so SIGTERM was lost.)
#[tokio::test]
async fn a_closed_log_pipe_neither_stops_serving_nor_stopping() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let model = common::test_model_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferroseek"))
        .args(["serve", "--port", "0", "--kv-cache-memory", "32MiB"])
        .args(["--model", &model, "--served-model-name", "tiny-deepseek-v3"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut base = None;
    {
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(at) = line.find("listening on http://") {
                let rest = &line[at + "listening on ".len()..];
                base = Some(rest.split_whitespace().next().unwrap().to_string());
            }
            if line.contains("model ready") {
                break;
            }
        }
    } // The reader goes: stderr is now a broken pipe.
    let base = base.expect("the server logged its address");
    let client = reqwest::Client::new();
    // "model ready" is logged just before the server takes the model.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = |r: Result<reqwest::Response, _>| r.is_ok_and(|r| r.status().is_success());
    while !ready(client.get(format!("{base}/health")).send().await) {
        assert!(Instant::now() < deadline, "the server never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..2 {
        let body = json!({"model": "tiny-deepseek-v3", "prompt": "Hello", "max_tokens": 4});
        let (status, reply) = common::post_url(&format!("{base}/v1/completions"), body).await;
        assert_eq!(
            (status, &reply["usage"]["completion_tokens"]),
            (200, &json!(4)),
            "{reply}"
        );
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server did not stop on SIGTERM with its log pipe closed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}
