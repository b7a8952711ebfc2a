//! Clients that go away mid-stream cancel their requests: the KV cache
//! blocks they held return to the pool.

mod common;

use std::time::{Duration, Instant};

use common::Server;
use futures_util::StreamExt;
use serde_json::json;

#[tokio::test]
async fn cancelled_streams_free_their_kv_blocks() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for (i, path) in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/chat/completions",
    ]
    .iter()
    .enumerate()
    {
        let body = if path.contains("chat") {
            json!({"messages": [{"role": "user", "content": format!("Story {i}")}],
                   "max_tokens": 3000, "ignore_eos": true, "stream": true, "n": 2})
        } else {
            json!({"prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": true, "stream": true})
        };
        let resp = client
            .post(server.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut bytes = resp.bytes_stream();
        // Read until some tokens arrived: the request is running.
        let mut seen = 0;
        while seen < 3 {
            let chunk = bytes.next().await.expect("the stream goes on").unwrap();
            seen += String::from_utf8_lossy(&chunk).matches("data: ").count();
        }
        streams.push(bytes);
    }
    assert!(
        server
            .metric(&client, "ferroseek_kv_cache_blocks_used")
            .await
            > 0.0
    );
    assert!(
        server
            .metric(&client, "ferroseek_num_requests_running")
            .await
            > 0.0
    );
    drop(streams);

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let used = server
            .metric(&client, "ferroseek_kv_cache_blocks_used")
            .await;
        let running = server
            .metric(&client, "ferroseek_num_requests_running")
            .await;
        if used == 0.0 && running == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "blocks still used: {used}, running: {running}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gone = |l: &str| l.contains("client went away mid-stream");
    assert!(server.logs_once(gone).lines().any(gone));
    // The server still serves.
    let resp = client
        .post(server.url("/v1/completions"))
        .json(&json!({"prompt": "x", "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
