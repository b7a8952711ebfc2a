//! The real binary over raw HTTP: response shapes, SSE framing, the API
//! key, limits, the small routes, and a graceful SIGTERM.

mod common;

use common::{sse_payloads, Server};
use serde_json::{json, Value};

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn chat_completion_has_openai_shape_and_usage() {
    let server = Server::start(&[]);
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"model": "tiny-deepseek-v3", "messages": user("Hello"), "max_tokens": 5,
               "logprobs": true, "top_logprobs": 3, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert!(body["created"].as_u64().unwrap() > 1_600_000_000);
    assert_eq!(body["model"], "tiny-deepseek-v3");
    assert!(body["system_fingerprint"].is_string());
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert!(choice["message"]["content"].is_string());
    assert_eq!(choice["finish_reason"], "length");
    let content = choice["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 5);
    let mut text_bytes = Vec::new();
    for entry in content {
        assert!(entry["logprob"].as_f64().unwrap() <= 0.0);
        assert_eq!(entry["top_logprobs"].as_array().unwrap().len(), 3);
        let bytes: Vec<u8> = serde_json::from_value(entry["bytes"].clone()).unwrap();
        text_bytes.extend(bytes);
        // Greedy: the chosen token is the most likely one.
        assert_eq!(entry["top_logprobs"][0]["logprob"], entry["logprob"]);
    }
    assert_eq!(
        String::from_utf8_lossy(&text_bytes),
        choice["message"]["content"].as_str().unwrap(),
        "the tokens' bytes spell the content"
    );
    let usage = &body["usage"];
    assert_eq!(usage["completion_tokens"], 5);
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap() + 5)
    );
    assert!(usage["prompt_tokens_details"]["cached_tokens"].is_u64());
    assert_eq!(usage["completion_tokens_details"]["reasoning_tokens"], 0);
}

#[tokio::test]
async fn chat_stream_framing_role_first_finish_last_usage_then_done() {
    let server = Server::start(&[]);
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(
            &json!({"messages": user("Hi"), "max_tokens": 4, "n": 2, "stream": true,
                      "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let body = resp.text().await.unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1]
        .iter()
        .map(|p| serde_json::from_str(p).unwrap())
        .collect();
    let id = chunks[0]["id"].clone();
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], id, "one id for the whole stream");
        assert!(chunk.as_object().unwrap().contains_key("usage"));
    }
    let (usage_chunk, rest) = chunks.split_last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(usage_chunk["usage"]["completion_tokens"], 8);
    for index in 0..2 {
        let mine: Vec<&Value> = rest
            .iter()
            .filter(|c| c["choices"][0]["index"] == index)
            .collect();
        let first = &mine[0]["choices"][0];
        assert_eq!(first["delta"]["role"], "assistant");
        assert!(first["finish_reason"].is_null());
        let last = &mine.last().unwrap()["choices"][0];
        assert_eq!(last["finish_reason"], "length");
        assert_eq!(last["delta"], json!({}));
        for middle in &mine[1..mine.len() - 1] {
            assert!(middle["choices"][0]["finish_reason"].is_null());
            assert!(middle["usage"].is_null());
        }
    }
}

/// A request as tool-calling clients send it (a call in the history with
/// `content: null`, its answer, nulls for unset tool fields): the text is
/// decoded with special tokens kept for the tool-call parser, yet no other
/// special token reaches a streamed `content` (BOS and PAD are forced here).
#[tokio::test]
async fn chat_with_tools_streams_without_special_tokens() {
    let server = Server::start(&[]);
    let messages = json!([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18°C"},
    ]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": null, "strict": null,
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .json(
            &json!({"messages": messages, "tools": tools, "tool_choice": "auto",
            "parallel_tool_calls": false, "max_tokens": 4, "stream": true,
            "logit_bias": {"0": 100, "2": 100}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let mut finish = Value::Null;
    for payload in &payloads[..payloads.len() - 1] {
        let chunk: Value = serde_json::from_str(payload).unwrap();
        let choice = &chunk["choices"][0];
        let content = choice["delta"]["content"].as_str().unwrap_or_default();
        assert!(!content.contains("<｜"), "{payload}");
        assert!(choice["delta"].get("tool_calls").is_none(), "{payload}");
        if !choice["finish_reason"].is_null() {
            finish = choice["finish_reason"].clone();
        }
    }
    assert_eq!(finish, "length");
}

#[tokio::test]
async fn thinking_requests_return_reasoning_content() {
    let server = Server::start(&[]);
    for body in [
        json!({"messages": user("Why?"), "max_tokens": 6, "temperature": 0, "chat_template_kwargs": {"thinking": true}}),
        json!({"messages": user("Why?"), "max_tokens": 6, "temperature": 0, "thinking": {"type": "enabled"}}),
    ] {
        let (status, resp) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 200, "{resp}");
        // The embedded template opens <think> in the prompt: the output is
        // reasoning until the model closes it.
        let message = &resp["choices"][0]["message"];
        let reasoning = message["reasoning_content"].as_str().unwrap_or("");
        let reasoning_tokens = resp["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap();
        assert!(reasoning_tokens >= 1, "{resp}");
        assert!(!reasoning.is_empty() || reasoning_tokens == 0, "{resp}");
        assert!(!message["content"].as_str().unwrap().contains("</think>"));
    }
    // Streamed, the reasoning arrives in `delta.reasoning_content`.
    let body = client()
        .post(server.url("/v1/chat/completions"))
        .json(
            &json!({"messages": user("Why?"), "max_tokens": 6, "temperature": 0,
                      "stream": true, "thinking": {"type": "enabled"}}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let deltas: Vec<Value> = sse_payloads(&body)
        .iter()
        .filter(|p| *p != "[DONE]")
        .map(|p| serde_json::from_str::<Value>(p).unwrap()["choices"][0]["delta"].clone())
        .collect();
    assert!(
        deltas.iter().any(|d| d["reasoning_content"].is_string()),
        "{body}"
    );
    let (_, plain) = server.post("/v1/chat/completions",
        json!({"messages": user("Why?"), "max_tokens": 6, "temperature": 0, "thinking": {"type": "disabled"}}),
    )
    .await;
    assert_eq!(
        plain["usage"]["completion_tokens_details"]["reasoning_tokens"],
        0
    );
}

#[tokio::test]
async fn seeded_sampling_is_reproducible_and_repeated_prompts_hit_the_cache() {
    let server = Server::start(&[]);
    let long = "Tell me a long story about a lighthouse keeper and the sea, in many words.";
    let body = json!({"messages": user(long), "max_tokens": 12, "temperature": 1.0, "seed": 42});
    let (_, a) = server.post("/v1/chat/completions", body.clone()).await;
    let (_, b) = server.post("/v1/chat/completions", body).await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    assert_eq!(a["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
    let prompt_tokens = b["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(prompt_tokens > 16, "the prompt fills a whole cache block");
    let cached = b["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap();
    assert!(
        cached > 0 && cached < prompt_tokens,
        "cached {cached} of {prompt_tokens}"
    );
    // DeepSeek's API names the same split.
    assert_eq!(a["usage"]["prompt_cache_hit_tokens"], 0);
    assert_eq!(a["usage"]["prompt_cache_miss_tokens"], prompt_tokens);
    assert_eq!(b["usage"]["prompt_cache_hit_tokens"], cached);
    assert_eq!(
        b["usage"]["prompt_cache_miss_tokens"],
        prompt_tokens - cached
    );
    let metrics = reqwest::get(server.url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(&format!(
        "ferroseek_prefix_cache_hit_tokens_total {cached}\n"
    )));
}

#[tokio::test]
async fn legacy_completions_echo_logprobs_and_token_prompts() {
    let server = Server::start(&[]);
    // max_tokens 0 + echo: only the prompt and its log-probabilities.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": [0, 400, 401, 402], "max_tokens": 0, "echo": true, "logprobs": 2}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    let choice = &body["choices"][0];
    let lp = &choice["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 4);
    assert!(lp["token_logprobs"][0].is_null());
    assert!(lp["top_logprobs"][0].is_null());
    for i in 1..4 {
        assert!(lp["token_logprobs"][i].as_f64().unwrap() <= 0.0);
        assert!(lp["top_logprobs"][i].as_object().unwrap().len() <= 2);
    }
    assert_eq!(body["usage"]["completion_tokens"], 0);
    assert_eq!(body["usage"]["prompt_tokens"], 4);
    let offsets: Vec<usize> = serde_json::from_value(lp["text_offset"].clone()).unwrap();
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));

    // Several prompts, n choices each: index = prompt * n + choice.
    let (status, body) = server
        .post(
            "/v1/completions",
            json!({"prompt": ["The cat", "A dog"], "max_tokens": 3, "n": 2, "echo": true,
               "logprobs": 1, "temperature": 0.7, "seed": 1}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let choices = body["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4);
    for (i, c) in choices.iter().enumerate() {
        assert_eq!(c["index"], i);
        let prompt = if i < 2 { "The cat" } else { "A dog" };
        let text = c["text"].as_str().unwrap();
        assert!(text.starts_with(prompt), "{text:?}");
        let lp = &c["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), n);
        assert_eq!(lp["text_offset"].as_array().unwrap().len(), n);
        assert!(lp["text_offset"][n - 1].as_u64().unwrap() as usize <= text.chars().count());
    }
    assert_eq!(body["usage"]["completion_tokens"], 12);

    // Streaming with usage.
    let text = client()
        .post(server.url("/v1/completions"))
        .json(
            &json!({"prompt": [[5, 6], [7]], "max_tokens": 2, "stream": true,
                      "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let payloads = sse_payloads(&text);
    assert_eq!(payloads.last().unwrap(), "[DONE]");
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 4);
    assert_eq!(usage["usage"]["prompt_tokens"], 3);
    let finished = payloads
        .iter()
        .filter(|p| p.contains(r#""finish_reason":"length""#))
        .count();
    assert_eq!(finished, 2);
}

#[tokio::test]
async fn api_key_guards_v1_but_not_health() {
    let server = Server::start(&["--api-key", "s3cret"]);
    let c = client();
    let models = server.url("/v1/models");
    let resp = c.get(&models).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let resp = c.get(&models).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = c.get(&models).bearer_auth("s3cret").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c.get(server.url("/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        !server.logs().contains("s3cret"),
        "the key never reaches the log"
    );
}

#[tokio::test]
async fn small_routes_models_tokenize_metrics_openapi() {
    let server = Server::start(&[
        "--served-model-name",
        "tiny,org/alias",
        "--max-body-size",
        "2KiB",
    ]);
    let c = client();
    let list: Value = c
        .get(server.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["object"], "list");
    assert_eq!(list["data"][0]["id"], "tiny");
    assert_eq!(list["data"][1]["id"], "org/alias");
    let resp = c
        .get(server.url("/v1/models/org/alias"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = c.get(server.url("/v1/models/gpt-4")).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "model_not_found");

    let (status, tok) = server
        .post("/tokenize", json!({"prompt": "Hello world"}))
        .await;
    assert_eq!(status, 200);
    let ids = tok["tokens"].clone();
    assert_eq!(tok["count"], ids.as_array().unwrap().len());
    let (_, detok) = server.post("/detokenize", json!({"tokens": ids})).await;
    assert!(detok["prompt"].as_str().unwrap().ends_with("Hello world"));

    let resp = c
        .post(server.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(vec![b' '; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "request_too_large");

    let metrics = c
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "ferroseek_http_requests_total{route=\"/v1/models\",status=\"200\"}",
        "ferroseek_num_requests_waiting",
        "ferroseek_num_requests_running",
        "ferroseek_kv_cache_blocks_used",
        "ferroseek_kv_cache_blocks_total",
        "ferroseek_prompt_tokens_total",
        "ferroseek_generation_tokens_total",
        "# TYPE ferroseek_time_to_first_token_seconds histogram",
        "# TYPE ferroseek_inter_token_latency_seconds histogram",
        "# TYPE ferroseek_request_queue_time_seconds histogram",
        "# TYPE ferroseek_request_prefill_time_seconds histogram",
    ] {
        assert!(metrics.contains(name), "missing {name}");
    }

    let doc: Value = c
        .get(server.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(doc["paths"]["/v1/chat/completions"]["post"].is_object());
    // Each request's own fields, and the sampling fields both share
    // (flattened: `allOf` the shared schema and the request's own object).
    let schemas = &doc["components"]["schemas"];
    for (request, own) in [
        ("ChatCompletionRequest", "messages"),
        ("CompletionRequest", "prompt"),
    ] {
        let parts = schemas[request]["allOf"].as_array().unwrap();
        assert!(
            parts.iter().any(|p| p["properties"][own].is_object()),
            "{request}"
        );
        assert!(
            parts
                .iter()
                .any(|p| p["$ref"] == "#/components/schemas/SamplingRequest"),
            "{request}"
        );
    }
    assert!(schemas["SamplingRequest"]["properties"]["temperature"].is_object());
}

#[tokio::test]
async fn request_id_is_returned_and_logged() {
    let server = Server::start(&[]);
    let resp = client()
        .post(server.url("/v1/chat/completions"))
        .header("x-request-id", "trace-me-123")
        .json(&json!({"messages": user("Hi"), "max_tokens": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-me-123");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], "chatcmpl-trace-me-123");
    let logged = |l: &str| l.contains("trace-me-123") && l.contains("chat completion");
    let logs = server.logs_once(logged);
    assert!(logs.lines().any(logged), "{logs}");
}

#[tokio::test]
async fn cors_allows_configured_origins() {
    let server = Server::start(&["--cors-allow-origin", "https://app.example"]);
    let resp = client()
        .request(reqwest::Method::OPTIONS, server.url("/v1/models"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
}

#[tokio::test]
async fn sigterm_lets_a_running_stream_finish_then_exits_zero() {
    let server = Server::start(&[]);
    let resp = client()
        .post(server.url("/v1/completions"))
        .json(
            &json!({"prompt": "Once upon", "max_tokens": 200, "ignore_eos": true, "stream": true}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let base = server.base.clone();
    let waiter = tokio::task::spawn_blocking(move || {
        let mut server = server;
        server.terminate()
    });
    let body = resp.text().await.unwrap();
    assert!(
        body.ends_with("data: [DONE]\n\n"),
        "the running stream completes"
    );
    assert_eq!(body.matches(r#""finish_reason":"length""#).count(), 1);
    let status = waiter.await.unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(reqwest::get(format!("{base}/health")).await.is_err());
}

/// Sampling fields a request leaves out take the model's
/// generation_config.json values (the default model's: temperature 0.6,
/// top_p 0.95), unless `--generation-config none`; seeded sampling shows it.
#[tokio::test]
async fn left_out_sampling_fields_take_the_generation_config() {
    async fn text(server: &Server, extra: Value) -> String {
        let mut body = json!({"prompt": "Hello", "max_tokens": 24, "ignore_eos": true, "seed": 7});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let resp = server.post_json("/v1/completions", &body).await;
        resp["choices"][0]["text"].as_str().unwrap().to_string()
    }
    let model = json!({"temperature": 0.6, "top_p": 0.95});
    let openai = json!({"temperature": 1.0, "top_p": 1.0});

    let server = Server::start(&[]);
    let left_out = text(&server, json!({})).await;
    assert_eq!(left_out, text(&server, model.clone()).await);
    assert_ne!(left_out, text(&server, openai.clone()).await);
    let logged = |l: &str| l.contains("sampling defaults from generation_config.json");
    assert!(server.logs_once(logged).lines().any(logged));

    let server = Server::start(&["--generation-config", "none"]);
    assert_eq!(text(&server, json!({})).await, text(&server, openai).await);
}
