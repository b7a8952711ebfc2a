//! The real binary under injected engine faults. The binary built for tests
//! has the engine's `fault-injection` feature (a dev-dependency turns it
//! on; a release build never has it), armed by `FERROSEEK_FAULT_*`
//! variables: a request whose prompt holds the armed token id trips it.

mod common;

use std::time::Duration;

use common::Server;
use serde_json::{json, Value};

/// A token id of the embedded model's vocabulary that arms the faults.
const MAGIC: u32 = 4000;

fn poisoned(stream: bool) -> Value {
    json!({"prompt": [5, 6, MAGIC, 7], "max_tokens": 5, "stream": stream})
}

fn assert_server_error(body: &Value) {
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("injected fault"), "{body}");
}

#[tokio::test]
async fn a_failed_step_is_a_server_error_and_the_next_request_is_served() {
    let server = Server::start_with_env(&[], &[("FERROSEEK_FAULT_STEP_PANIC_TOKEN", "4000")]);
    let client = reqwest::Client::new();
    let url = server.url("/v1/completions");

    let resp = client
        .post(&url)
        .json(&poisoned(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    assert_server_error(&resp.json().await.unwrap());

    // Streamed: the headers went out before the failure, so the error is an
    // event, and the stream ends.
    let resp = client
        .post(&url)
        .json(&poisoned(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let payloads = common::sse_payloads(&resp.text().await.unwrap());
    let (done, rest) = payloads.split_last().unwrap();
    assert_eq!(done, "[DONE]");
    let error: Value = serde_json::from_str(rest.last().unwrap()).unwrap();
    assert_server_error(&error);

    let resp = client
        .post(&url)
        .json(&json!({"prompt": [5, 6, 7], "max_tokens": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");
    let health = client.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = client.get(server.url("/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("ferroseek_failed_steps_total 2\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_engine_that_cannot_go_on_makes_the_process_exit_with_an_error() {
    let mut server = Server::start_with_env(&[], &[("FERROSEEK_FAULT_LOOP_PANIC_TOKEN", "4000")]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let resp = client
        .post(server.url("/v1/completions"))
        .json(&poisoned(false))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["type"], "server_error", "{body}");
    // The request is answered as the engine thread unwinds; an instant
    // later the engine is marked stopped. From then until the process is
    // gone it is unhealthy: 503, or no longer listening.
    let mut healthy = true;
    while server.alive() {
        match client.get(server.url("/health")).send().await {
            Ok(health) if healthy && health.status() == 200 => {}
            Ok(health) => {
                healthy = false;
                assert_eq!(health.status(), 503);
            }
            Err(_) => healthy = false,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = server.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "logs:\n{}", server.logs());
    let logs = server.logs_once(|l| l.contains("the engine failed and cannot go on"));
    assert!(
        logs.contains("the engine failed and cannot go on"),
        "{logs}"
    );
}
