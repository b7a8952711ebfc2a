//! Malformed and hostile requests: every one is answered 4xx with OpenAI's
//! error body (never a 500, never a hang, never a crash), and the server
//! keeps serving afterwards.

mod common;

use common::Server;
use serde_json::{json, Value};

struct Case {
    name: &'static str,
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    content_type: Option<&'static str>,
    status: u16,
    /// The `param` the error should name, when it names one.
    param: Option<&'static str>,
}

fn case(
    name: &'static str,
    path: &'static str,
    body: Value,
    status: u16,
    param: Option<&'static str>,
) -> Case {
    Case {
        name,
        method: "POST",
        path,
        body: body.to_string().into_bytes(),
        content_type: Some("application/json"),
        status,
        param,
    }
}

fn raw(name: &'static str, path: &'static str, body: &[u8], status: u16) -> Case {
    Case {
        name,
        method: "POST",
        path,
        body: body.to_vec(),
        content_type: Some("application/json"),
        status,
        param: None,
    }
}

const CHAT: &str = "/v1/chat/completions";
const COMPL: &str = "/v1/completions";

fn chat(extra: Value) -> Value {
    let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn cases() -> Vec<Case> {
    let huge_ids: Vec<u32> = vec![7; 5000];
    vec![
        raw("empty body", CHAT, b"", 400),
        raw("not JSON", CHAT, b"hello there", 400),
        raw(
            "truncated JSON",
            CHAT,
            br#"{"messages": [{"role": "user""#,
            400,
        ),
        raw("trailing garbage", CHAT, br#"{"messages": []} }"#, 400),
        raw("JSON array body", CHAT, b"[1, 2, 3]", 400),
        raw("invalid UTF-8", CHAT, b"{\"messages\": \"\xff\xfe\"}", 400),
        raw("deeply nested JSON", CHAT, &[b'['; 100_000], 400),
        raw(
            "NaN literal",
            CHAT,
            br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}"#,
            400,
        ),
        raw(
            "Infinity literal",
            COMPL,
            br#"{"prompt": "hi", "top_p": Infinity}"#,
            400,
        ),
        raw(
            "duplicate keys",
            CHAT,
            br#"{"messages": [{"role": "user", "content": "hi"}], "n": 1, "n": 64}"#,
            400,
        ),
        case(
            "10,000 stop strings",
            CHAT,
            chat(json!({"stop": (0..10_000).map(|i| i.to_string()).collect::<Vec<_>>()})),
            400,
            Some("stop"),
        ),
        case(
            "logit_bias with 15,000 entries",
            COMPL,
            json!({
                "prompt": "hi",
                "logit_bias": (0..15_000).map(|i| (i.to_string(), json!(1))).collect::<serde_json::Map<_, _>>(),
            }),
            400,
            Some("logit_bias"),
        ),
        // Past the body limit this server runs with: refused before parsing.
        case(
            "logit_bias with 100,000 entries",
            CHAT,
            chat(json!({
                "logit_bias": (0..100_000).map(|i| (i.to_string(), json!(1))).collect::<serde_json::Map<_, _>>(),
            })),
            413,
            None,
        ),
        case(
            "missing messages",
            CHAT,
            json!({"model": "tiny-deepseek-v3"}),
            400,
            Some("messages"),
        ),
        case(
            "empty messages",
            CHAT,
            json!({"messages": []}),
            400,
            Some("messages"),
        ),
        case(
            "messages not a list",
            CHAT,
            json!({"messages": "hi"}),
            400,
            Some("messages"),
        ),
        case(
            "unknown role",
            CHAT,
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        case(
            "role wrong type",
            CHAT,
            json!({"messages": [{"role": 5, "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        case(
            "content wrong type",
            CHAT,
            json!({"messages": [{"role": "user", "content": 42}]}),
            400,
            Some("messages[0].content"),
        ),
        case(
            "user message without content",
            CHAT,
            json!({"messages": [{"role": "user"}]}),
            400,
            Some("messages[0].content"),
        ),
        case(
            "image part",
            CHAT,
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            400,
            Some("messages[0].content[0].type"),
        ),
        case(
            "temperature as string",
            CHAT,
            chat(json!({"temperature": "hot"})),
            400,
            Some("temperature"),
        ),
        case(
            "temperature too high",
            CHAT,
            chat(json!({"temperature": 7})),
            400,
            Some("temperature"),
        ),
        case(
            "negative temperature",
            CHAT,
            chat(json!({"temperature": -1})),
            400,
            Some("temperature"),
        ),
        case(
            "top_p zero",
            CHAT,
            chat(json!({"top_p": 0})),
            400,
            Some("top_p"),
        ),
        case("n zero", CHAT, chat(json!({"n": 0})), 400, Some("n")),
        case("n huge", CHAT, chat(json!({"n": 100000})), 400, Some("n")),
        case(
            "n fractional",
            CHAT,
            chat(json!({"n": 1.5})),
            400,
            Some("n"),
        ),
        case(
            "max_tokens negative",
            CHAT,
            chat(json!({"max_tokens": -5})),
            400,
            Some("max_tokens"),
        ),
        case(
            "max_tokens zero for chat",
            CHAT,
            chat(json!({"max_tokens": 0})),
            400,
            Some("max_tokens"),
        ),
        case(
            "max_tokens beyond context",
            CHAT,
            chat(json!({"max_completion_tokens": 1_000_000})),
            400,
            Some("max_completion_tokens"),
        ),
        case(
            "max_tokens overflowing i64",
            CHAT,
            chat(json!({"max_tokens": 1e30})),
            400,
            Some("max_tokens"),
        ),
        case(
            "presence_penalty out of range",
            CHAT,
            chat(json!({"presence_penalty": 3})),
            400,
            Some("presence_penalty"),
        ),
        case(
            "frequency_penalty out of range",
            CHAT,
            chat(json!({"frequency_penalty": -9})),
            400,
            Some("frequency_penalty"),
        ),
        case(
            "top_logprobs too many",
            CHAT,
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            400,
            Some("top_logprobs"),
        ),
        case(
            "top_logprobs without logprobs",
            CHAT,
            chat(json!({"top_logprobs": 3})),
            400,
            Some("top_logprobs"),
        ),
        case(
            "logit_bias id outside vocab",
            CHAT,
            chat(json!({"logit_bias": {"999999": 5}})),
            400,
            Some("logit_bias"),
        ),
        case(
            "logit_bias not an id",
            CHAT,
            chat(json!({"logit_bias": {"abc": 5}})),
            400,
            Some("logit_bias"),
        ),
        case(
            "logit_bias value out of range",
            CHAT,
            chat(json!({"logit_bias": {"5": 500}})),
            400,
            Some("logit_bias"),
        ),
        case(
            "stop wrong type",
            CHAT,
            chat(json!({"stop": 17})),
            400,
            Some("stop"),
        ),
        case(
            "too many stop strings",
            CHAT,
            chat(json!({"stop": (0..40).map(|i| i.to_string()).collect::<Vec<_>>()})),
            400,
            Some("stop"),
        ),
        case(
            "empty stop string",
            CHAT,
            chat(json!({"stop": [""]})),
            400,
            Some("stop"),
        ),
        case(
            "top_k negative",
            CHAT,
            chat(json!({"top_k": -7})),
            400,
            Some("top_k"),
        ),
        case(
            "min_p out of range",
            CHAT,
            chat(json!({"min_p": 2})),
            400,
            Some("min_p"),
        ),
        case(
            "repetition_penalty zero",
            CHAT,
            chat(json!({"repetition_penalty": 0})),
            400,
            Some("repetition_penalty"),
        ),
        case(
            "stream_options without stream",
            CHAT,
            chat(json!({"stream_options": {"include_usage": true}})),
            400,
            Some("stream_options"),
        ),
        case(
            "unknown model",
            CHAT,
            chat(json!({"model": "gpt-4o"})),
            404,
            Some("model"),
        ),
        case(
            "bad thinking type",
            CHAT,
            chat(json!({"thinking": {"type": "sometimes"}})),
            400,
            Some("thinking.type"),
        ),
        case(
            "bad reasoning_effort",
            CHAT,
            chat(json!({"reasoning_effort": "extreme"})),
            400,
            Some("reasoning_effort"),
        ),
        case(
            "stop_token_ids outside vocab",
            CHAT,
            chat(json!({"stop_token_ids": [1, 99999999]})),
            400,
            Some("stop_token_ids[1]"),
        ),
        case(
            "prompt too long for the context",
            COMPL,
            json!({"prompt": huge_ids, "max_tokens": 1}),
            400,
            None,
        ),
        case(
            "missing prompt",
            COMPL,
            json!({"max_tokens": 2}),
            400,
            Some("prompt"),
        ),
        case(
            "prompt wrong type",
            COMPL,
            json!({"prompt": {"text": "x"}}),
            400,
            Some("prompt"),
        ),
        case(
            "prompt mixed list",
            COMPL,
            json!({"prompt": ["a", 1]}),
            400,
            Some("prompt"),
        ),
        case(
            "negative token id",
            COMPL,
            json!({"prompt": [1, -2]}),
            400,
            Some("prompt"),
        ),
        case(
            "token id outside vocab",
            COMPL,
            json!({"prompt": [1, 4_000_000]}),
            400,
            Some("prompt"),
        ),
        case(
            "empty prompt list",
            COMPL,
            json!({"prompt": []}),
            400,
            Some("prompt"),
        ),
        case(
            "logprobs too many",
            COMPL,
            json!({"prompt": "x", "logprobs": 50}),
            400,
            Some("logprobs"),
        ),
        case(
            "best_of unsupported",
            COMPL,
            json!({"prompt": "x", "best_of": 3}),
            400,
            Some("best_of"),
        ),
        case(
            "suffix unsupported",
            COMPL,
            json!({"prompt": "x", "suffix": "end"}),
            400,
            Some("suffix"),
        ),
        case(
            "detokenize negative id",
            "/detokenize",
            json!({"tokens": [-1]}),
            400,
            Some("tokens[0]"),
        ),
        case(
            "detokenize id outside vocab",
            "/detokenize",
            json!({"tokens": [123456789]}),
            400,
            Some("tokens[0]"),
        ),
        case(
            "tokenize neither prompt nor messages",
            "/tokenize",
            json!({}),
            400,
            None,
        ),
        Case {
            name: "unknown route",
            method: "GET",
            path: "/v1/engines",
            body: Vec::new(),
            content_type: None,
            status: 404,
            param: None,
        },
        Case {
            name: "wrong method",
            method: "GET",
            path: CHAT,
            body: Vec::new(),
            content_type: None,
            status: 405,
            param: None,
        },
        Case {
            name: "form-encoded body",
            method: "POST",
            path: CHAT,
            body: b"messages=hi".to_vec(),
            content_type: Some("application/x-www-form-urlencoded"),
            status: 400,
            param: None,
        },
        Case {
            name: "body over the size limit",
            method: "POST",
            path: CHAT,
            body: {
                let mut b = br#"{"messages": [{"role": "user", "content": ""#.to_vec();
                b.extend(std::iter::repeat_n(b'a', 300 * 1024));
                b.extend(br#""}]}"#);
                b
            },
            content_type: Some("application/json"),
            status: 413,
            param: None,
        },
    ]
}

#[tokio::test]
async fn hostile_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&["--max-body-size", "256KiB"]);
    let client = reqwest::Client::new();
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut failures = Vec::new();
    for case in &cases {
        let mut req = client.request(case.method.parse().unwrap(), server.url(case.path));
        if let Some(ct) = case.content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.body(case.body.clone()).send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        let body: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                failures.push(format!("{}: body is not JSON: {text:?}", case.name));
                continue;
            }
        };
        let error = &body["error"];
        let shaped = error["message"].as_str().is_some_and(|m| !m.is_empty())
            && error["type"].is_string()
            && error
                .as_object()
                .is_some_and(|e| e.contains_key("param") && e.contains_key("code"));
        if status != case.status || !shaped {
            failures.push(format!("{}: got {status} {text}", case.name));
        }
        if let Some(param) = case.param {
            if error["param"] != param {
                failures.push(format!(
                    "{}: param {} instead of {param}: {text}",
                    case.name, error["param"]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // Still serving.
    let resp = client
        .post(server.url(CHAT))
        .json(&chat(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let metrics = client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("status=\"500\""), "{metrics}");
}
