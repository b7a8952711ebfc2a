//! Router tests without a socket (`tower::ServiceExt::oneshot`): the HTTP
//! layer's own behaviour, before and after the model is loaded.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::app;
use crate::cli::{ApiKey, Cli, ServeArgs};
use crate::metrics::Metrics;
use crate::state::{AppState, Settings};

fn state(api_key: Option<&str>) -> AppState {
    serving(&["tiny-deepseek-v3"], api_key)
}

fn serving(names: &[&str], api_key: Option<&str>) -> AppState {
    AppState::new(
        Settings {
            served_names: names.iter().map(|n| n.to_string()).collect(),
            root: names[0].into(),
            api_key: api_key.map(ApiKey::new),
            max_body_size: 1024,
            body_read_timeout: std::time::Duration::from_secs(30),
            cors_allow_origin: Vec::new(),
        },
        Metrics::new().unwrap(),
    )
}

fn loaded_state() -> AppState {
    loaded(state(None))
}

/// `state` with the embedded model loaded.
fn loaded(state: AppState) -> AppState {
    use clap::Parser;
    let args: ServeArgs = Cli::parse_from([
        "ferroseek",
        "--kv-cache-memory",
        "8MiB",
        "--max-num-seqs",
        "4",
    ])
    .into_serve();
    let device = args.device.open().expect("the CPU opens");
    state.set_ready(crate::load::load(&args, device).expect("the embedded model loads"));
    state
}

async fn call(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::empty()).unwrap()
}

fn post(path: &str, body: Value) -> Request<Body> {
    Request::post(path)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap()
}

#[tokio::test]
async fn before_loading_health_and_generation_answer_503() {
    let s = state(None);
    let (status, body) = call(&s, get("/health")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["error"]["type"], "service_unavailable_error");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    let (status, _) = call(&s, post("/v1/chat/completions", chat)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Metrics answer even while loading.
    let resp = app(s.clone()).oneshot(get("/metrics")).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn api_key_is_checked_before_anything_else_but_not_on_health() {
    let s = state(Some("k"));
    let (status, body) = call(&s, get("/v1/models")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "invalid_api_key");
    let req = Request::get("/v1/models")
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s, req).await.0, StatusCode::UNAUTHORIZED);
    let req = Request::post("/tokenize").body(Body::from("{}")).unwrap();
    assert_eq!(call(&s, req).await.0, StatusCode::UNAUTHORIZED);
    // Past the key, the model is still loading.
    let req = Request::get("/v1/models")
        .header("authorization", "Bearer k")
        .body(Body::empty())
        .unwrap();
    assert_eq!(call(&s, req).await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        call(&s, get("/health")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[test]
fn the_settings_never_show_the_api_key() {
    let s = state(Some("sk-settings-7310"));
    let shown = format!("{:?}", s.settings());
    assert!(!shown.contains("sk-settings-7310"), "{shown}");
    assert!(shown.contains("[redacted]"), "{shown}");
}

#[tokio::test]
async fn unknown_routes_methods_and_big_bodies_get_openai_errors() {
    let s = state(None);
    let (status, body) = call(&s, get("/v2/anything")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "unknown_url");
    let (status, body) = call(&s, get("/v1/completions")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(body["error"]["message"].is_string());
    let big = json!({"prompt": "x".repeat(4096)});
    let (status, body) = call(&s, post("/v1/completions", big)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body["error"]["code"], "request_too_large");
    let (status, body) = call(&s, post("/v1/completions", json!({"prompt": 5}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "prompt");
}

#[tokio::test]
async fn loaded_router_serves_models_tokenize_and_chat() {
    let s = loaded_state();
    let (status, body) = call(&s, get("/health")).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let (status, body) = call(&s, get("/v1/models/tiny-deepseek-v3")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["max_model_len"], 512);
    let (_, body) = call(&s, post("/tokenize", json!({"prompt": "Hello"}))).await;
    assert_eq!(body["tokens"][0], 0, "BOS first");
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "n": 2});
    let (status, body) = call(&s, post("/v1/chat/completions", chat)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"].as_array().unwrap().len(), 2);
    let too_many = json!({"messages": [{"role": "user", "content": "hi"}], "n": 5});
    let (status, body) = call(&s, post("/v1/chat/completions", too_many)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "n");
    s.begin_shutdown();
    assert_eq!(
        call(&s, get("/health")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let chat = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3});
    assert_eq!(
        call(&s, post("/v1/chat/completions", chat)).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn every_served_name_is_retrievable_even_one_that_starts_with_a_slash() {
    let s = loaded(serving(
        &["tiny-deepseek-v3", "/srv/models/tiny", "org/tiny"],
        None,
    ));
    for (path, id) in [
        ("/v1/models/tiny-deepseek-v3", "tiny-deepseek-v3"),
        // What the OpenAI Python client sends for `models.retrieve("/srv/models/tiny")`:
        // older versions send the name as it is, newer ones percent-encode it.
        ("/v1/models//srv/models/tiny", "/srv/models/tiny"),
        ("/v1/models/%2Fsrv%2Fmodels%2Ftiny", "/srv/models/tiny"),
        ("/v1/models/org/tiny", "org/tiny"),
        ("/v1/models/org%2Ftiny", "org/tiny"),
        ("/v1/models//tiny-deepseek-v3", "tiny-deepseek-v3"),
    ] {
        let (status, body) = call(&s, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert_eq!(body["id"], id, "{path}");
    }
    let (status, body) = call(&s, get("/v1/models/srv/models/tiny")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "model_not_found");
}

/// A type error inside the flattened sampling fields still names the field.
#[test]
fn wrongly_typed_sampling_fields_name_their_field() {
    use crate::extract::parse_json;
    use crate::openai::chat::ChatCompletionRequest;
    use crate::openai::completions::CompletionRequest;
    let chat = br#"{"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}"#;
    let e = parse_json::<ChatCompletionRequest>(chat).unwrap_err();
    assert_eq!(e.detail.param.as_deref(), Some("temperature"));
    assert!(
        e.detail.message.starts_with("`temperature`: invalid type"),
        "{}",
        e.detail.message
    );
    let e = parse_json::<CompletionRequest>(br#"{"prompt": "x", "stop": 17}"#).unwrap_err();
    assert_eq!(e.detail.param.as_deref(), Some("stop"));
    let e = parse_json::<CompletionRequest>(br#"{"prompt": "x", "n": 1.5}"#).unwrap_err();
    assert_eq!(e.detail.param.as_deref(), Some("n"));
    // Fields of the route's own struct keep their paths, and unknown fields are ignored.
    let e = parse_json::<ChatCompletionRequest>(br#"{"messages": [{"role": 5}]}"#).unwrap_err();
    assert_eq!(e.detail.param.as_deref(), Some("messages[0].role"));
    let r = parse_json::<CompletionRequest>(
        br#"{"prompt": "x", "max_tokens": 3, "logprobs": 2, "frobnicate": [1]}"#,
    )
    .unwrap();
    assert_eq!((r.sampling.max_tokens, r.logprobs), (Some(3), Some(2)));
}

#[tokio::test]
async fn tool_fields_are_checked_and_none_or_no_parallel_calls_are_served() {
    let s = loaded_state();
    let tool = |name: &str| json!({"type": "function", "function": {"name": name}});
    let chat = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
            "tools": [tool("get_weather"), tool("get_time")]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        post("/v1/chat/completions", body)
    };
    for (extra, param) in [
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "nope"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "always"}), "tool_choice"),
        (
            json!({"tools": [tool("f"), {"type": "function", "function": {"name": "g", "parameters": []}}]}),
            "tools[1].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": null, "tool_choice": "required"}),
            "tool_choice",
        ),
    ] {
        let (status, body) = call(&s, chat(extra.clone())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{extra}: {body}");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    for extra in [
        json!({"tool_choice": "none"}),
        json!({"parallel_tool_calls": false}),
        json!({"tool_choice": "required"}),
        json!({"tool_choice": {"type": "function", "function": {"name": "get_time"}}}),
    ] {
        let (status, body) = call(&s, chat(extra.clone())).await;
        assert_eq!(status, StatusCode::OK, "{extra}: {body}");
        assert_eq!(body["object"], "chat.completion");
    }
}

/// With tools the text is decoded with special tokens kept (tool-call
/// markup is special in some families), but no other special token
/// reaches the content unless the client asks for them all.
#[tokio::test]
async fn with_tools_other_special_tokens_stay_out_of_the_content() {
    let s = loaded_state();
    // The embedded model's template writes V3.1's markup: the parser is on.
    assert_eq!(
        s.ready().unwrap().tool_format,
        Some(ferroseek_engine::ToolCallFormat::DeepSeekV31)
    );
    assert!(s
        .ready()
        .unwrap()
        .hidden_special_tokens
        .contains(&"<｜▁pad▁｜>".to_owned()));
    // BOS and PAD forced: ids 0 and 2 of the embedded model, both special.
    let chat = |skip: Option<bool>| {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
            "logit_bias": {"0": 100, "2": 100},
            "tools": [{"type": "function", "function": {"name": "f"}}]});
        if let Some(skip) = skip {
            body["skip_special_tokens"] = json!(skip);
        }
        post("/v1/chat/completions", body)
    };
    let (status, body) = call(&s, chat(None)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "", "{body}");
    let (_, body) = call(&s, chat(Some(false))).await;
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.contains("<｜begin▁of▁sentence｜>") || content.contains("<｜▁pad▁｜>"),
        "{content:?}"
    );
}
