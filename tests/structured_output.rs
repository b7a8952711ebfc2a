//! Structured output over HTTP on the embedded model: `response_format`
//! (`json_object`, `json_schema`), vLLM's `structured_outputs` and
//! `guided_*` fields, on chat and completions, whole and streamed; and
//! the 400s of constraints that cannot be compiled or that conflict. The
//! embedded model is random, so any valid output here is the grammar's doing.

mod common;

use common::{sse_payloads, Server};
use serde_json::{json, Value};

async fn post(server: &Server, path: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// The text of each choice of a streamed chat completion, and its finish reason.
async fn stream_chat(server: &Server, mut body: Value) -> Vec<(String, String)> {
    body["stream"] = json!(true);
    let text = reqwest::Client::new()
        .post(server.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let mut out: Vec<(String, String)> = Vec::new();
    for payload in sse_payloads(&text) {
        if payload == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&payload).unwrap();
        for choice in chunk["choices"].as_array().unwrap() {
            let i = choice["index"].as_u64().unwrap() as usize;
            if out.len() <= i {
                out.resize(i + 1, Default::default());
            }
            if let Some(c) = choice["delta"]["content"].as_str() {
                out[i].0.push_str(c);
            }
            if let Some(r) = choice["finish_reason"].as_str() {
                out[i].1 = r.to_string();
            }
        }
    }
    out
}

fn person_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 10},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3}
        },
        "required": ["name", "age", "pets"],
        "additionalProperties": false
    })
}

fn check_person(text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    let o = v.as_object().expect("an object");
    assert_eq!(o.len(), 3, "{text}");
    let name = o["name"].as_str().unwrap();
    assert!((1..=10).contains(&name.chars().count()), "{text}");
    assert!((0..=150).contains(&o["age"].as_i64().unwrap()), "{text}");
    let pets = o["pets"].as_array().unwrap();
    assert!(pets.len() <= 3);
    assert!(pets.iter().all(|p| p == "cat" || p == "dog"), "{text}");
}

fn chat(extra: Value) -> Value {
    let mut body = json!({
        "messages": [{"role": "user", "content": "Describe a person as JSON."}],
        "max_tokens": 300,
        "seed": 11,
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    body
}

#[tokio::test]
async fn json_schema_output_matches_whole_and_streamed() {
    let server = Server::start(&[]);
    let format = json!({"response_format": {"type": "json_schema", "json_schema": {
        "name": "person", "schema": person_schema(), "strict": true}}, "n": 3});
    let (status, body) = post(&server, "/v1/chat/completions", chat(format.clone())).await;
    assert_eq!(status, 200, "{body}");
    let mut whole = Vec::new();
    for choice in body["choices"].as_array().unwrap() {
        let text = choice["message"]["content"].as_str().unwrap();
        check_person(text);
        assert_eq!(choice["finish_reason"], "stop");
        whole.push((text.to_string(), "stop".to_string()));
    }
    // Seeded: the stream carries the same choices.
    let streamed = stream_chat(&server, chat(format)).await;
    assert_eq!(streamed, whole);
}

#[tokio::test]
async fn json_object_and_vllm_constraints() {
    let server = Server::start(&[]);
    let (status, body) = post(
        &server,
        "/v1/chat/completions",
        chat(json!({"response_format": {"type": "json_object"}, "max_tokens": 2000})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let choice = &body["choices"][0];
    // A random model may run out of tokens inside an open-ended object; a
    // finished one is a whole object.
    if choice["finish_reason"] == "stop" {
        let text = choice["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(v.is_object());
    }
    let cases = [
        (
            json!({"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}}),
            "regex",
        ),
        (
            json!({"structured_outputs": {"choice": ["red", "green", "blue"]}}),
            "choice",
        ),
        (json!({"guided_choice": ["left", "right"]}), "guided"),
        (
            json!({"structured_outputs": {"grammar": "start: \"x=\" NUM\nNUM: /[1-9][0-9]?/\n"}}),
            "grammar",
        ),
        (
            json!({"structured_outputs": {"json": person_schema()}}),
            "json",
        ),
        (
            json!({"guided_json": person_schema().to_string()}),
            "guided_json",
        ),
    ];
    for (extra, kind) in cases {
        let (status, body) = post(&server, "/v1/chat/completions", chat(extra)).await;
        assert_eq!(status, 200, "{kind}: {body}");
        let text = body["choices"][0]["message"]["content"].as_str().unwrap();
        assert_eq!(body["choices"][0]["finish_reason"], "stop", "{kind}");
        match kind {
            "regex" => {
                let b = text.as_bytes();
                assert!(b.len() == 6 && b[3] == b'-', "{text:?}");
                assert!(b[..3].iter().all(u8::is_ascii_digit), "{text:?}");
                assert!(b[4..].iter().all(u8::is_ascii_lowercase), "{text:?}");
            }
            "choice" => assert!(["red", "green", "blue"].contains(&text), "{text:?}"),
            "guided" => assert!(["left", "right"].contains(&text), "{text:?}"),
            "grammar" => {
                let n: u32 = text.strip_prefix("x=").unwrap().parse().unwrap();
                assert!((1..100).contains(&n), "{text:?}");
            }
            _ => check_person(text),
        }
    }
}

#[tokio::test]
async fn completions_take_structured_outputs_too() {
    let server = Server::start(&[]);
    let (status, body) = post(
        &server,
        "/v1/completions",
        json!({"prompt": "The answer is", "max_tokens": 50, "seed": 3,
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "p", "schema": person_schema()}}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    check_person(body["choices"][0]["text"].as_str().unwrap());
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn constraints_that_cannot_apply_are_400s_naming_the_field() {
    let server = Server::start(&[]);
    let cases = [
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "strnig"}}}}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": 5}}}),
            "response_format.json_schema.schema",
        ),
        (
            json!({"response_format": {"type": "json_schema"}}),
            "response_format.json_schema",
        ),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"structured_outputs": {"regex": "(open"}}),
            "structured_outputs.regex",
        ),
        (
            json!({"structured_outputs": {"grammar": "start: undefined_rule\n"}}),
            "structured_outputs.grammar",
        ),
        (
            json!({"structured_outputs": {"choice": []}}),
            "structured_outputs.choice",
        ),
        (json!({"guided_json": "{not json"}), "guided_json"),
        (
            json!({"response_format": {"type": "json_object"},
                   "structured_outputs": {"regex": "a"}}),
            "structured_outputs.regex",
        ),
    ];
    for (extra, param) in cases {
        let (status, body) = post(&server, "/v1/chat/completions", chat(extra.clone())).await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // `text` is no constraint at all.
    let (status, _) = post(
        &server,
        "/v1/chat/completions",
        chat(json!({"response_format": {"type": "text"}, "max_tokens": 3})),
    )
    .await;
    assert_eq!(status, 200);
}
