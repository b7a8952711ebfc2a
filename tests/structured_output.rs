//! Structured output over HTTP on the embedded model: `response_format`
//! (`json_object`, `json_schema`), vLLM's `structured_outputs` and
//! `guided_*` fields, on chat and completions, whole and streamed; and
//! the 400s of constraints that cannot be compiled or that conflict. The
//! embedded model is random, so any valid output here is the grammar's doing.

mod common;

use common::{sse_payloads, Server};
use serde_json::{json, Value};

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
    let (status, body) = server
        .post("/v1/chat/completions", chat(format.clone()))
        .await;
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
    let (status, body) = server
        .post(
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
        let (status, body) = server.post("/v1/chat/completions", chat(extra)).await;
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
    let (status, body) = server
        .post(
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
        let (status, body) = server
            .post("/v1/chat/completions", chat(extra.clone()))
            .await;
        assert_eq!(status, 400, "{extra}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], param, "{extra}: {body}");
        assert!(!body["error"]["message"].as_str().unwrap().is_empty());
    }
    // `text` is no constraint at all.
    let (status, _) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "text"}, "max_tokens": 3})),
        )
        .await;
    assert_eq!(status, 200);
}

fn weather_tools() -> Value {
    json!([
        {"type": "function", "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 12},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}
                },
                "required": ["city", "unit"],
                "additionalProperties": false
            }}},
        {"type": "function", "function": {
            "name": "get_time",
            "parameters": {
                "type": "object",
                "properties": {"zone": {"enum": ["UTC", "CET"]}},
                "required": ["zone"],
                "additionalProperties": false
            }}}
    ])
}

/// A call's arguments fit its function's schema.
fn check_call(call: &Value, only: Option<&str>) {
    assert_eq!(call["type"], "function");
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    let name = call["function"]["name"].as_str().unwrap();
    if let Some(only) = only {
        assert_eq!(name, only);
    }
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    let args = args.as_object().unwrap();
    match name {
        "get_weather" => {
            assert_eq!(args.len(), 2, "{args:?}");
            assert!(args["city"].as_str().unwrap().chars().count() <= 12);
            assert!(["celsius", "fahrenheit"].contains(&args["unit"].as_str().unwrap()));
        }
        "get_time" => {
            assert_eq!(args.len(), 1, "{args:?}");
            assert!(["UTC", "CET"].contains(&args["zone"].as_str().unwrap()));
        }
        other => panic!("unknown function {other}"),
    }
}

/// The tool calls of a streamed chat completion's choice 0, reassembled from
/// their deltas as OpenAI's clients do, and its finish reason.
async fn streamed_calls(server: &Server, mut body: Value) -> (Vec<Value>, String, String) {
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
    let (mut calls, mut content, mut finish) = (Vec::<Value>::new(), String::new(), String::new());
    for payload in sse_payloads(&text) {
        if payload == "[DONE]" {
            continue;
        }
        let chunk: Value = serde_json::from_str(&payload).unwrap();
        let Some(choice) = chunk["choices"].get(0) else {
            continue;
        };
        if let Some(c) = choice["delta"]["content"].as_str() {
            content.push_str(c);
        }
        for d in choice["delta"]["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let i = d["index"].as_u64().unwrap() as usize;
            if i == calls.len() {
                assert_eq!(d["function"]["arguments"], "", "a call starts empty: {d}");
                calls.push(json!({"id": d["id"], "type": d["type"],
                    "function": {"name": d["function"]["name"], "arguments": ""}}));
            } else {
                let args = calls[i]["function"]["arguments"]
                    .as_str()
                    .unwrap()
                    .to_string()
                    + d["function"]["arguments"].as_str().unwrap();
                calls[i]["function"]["arguments"] = json!(args);
            }
        }
        if let Some(r) = choice["finish_reason"].as_str() {
            finish = r.to_string();
        }
    }
    (calls, content, finish)
}

#[tokio::test]
async fn required_and_named_tool_choice_return_valid_calls() {
    let server = Server::start(&[]);
    let ask = |choice: Value, parallel: bool| {
        json!({"messages": [{"role": "user", "content": "Weather in Paris?"}],
               "tools": weather_tools(), "tool_choice": choice,
               "parallel_tool_calls": parallel, "max_tokens": 200, "seed": 5})
    };
    // One call each (`parallel_tool_calls: false`), so the section always
    // ends: with parallel calls a random model may keep calling until
    // `max_tokens` (the engine test walks cover sections of several calls).
    let cases = [
        (json!("required"), None),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            Some("get_time"),
        ),
    ];
    for (choice, only) in cases {
        let body = ask(choice.clone(), false);
        let (status, resp) = server.post("/v1/chat/completions", body.clone()).await;
        assert_eq!(status, 200, "{resp}");
        let c = &resp["choices"][0];
        assert_eq!(c["finish_reason"], "tool_calls", "{choice}: {resp}");
        assert!(c["message"]["content"].is_null(), "{resp}");
        let calls = c["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), 1);
        for call in calls {
            check_call(call, only);
        }
        // The same seed streamed: the deltas add up to the same calls.
        let (streamed, content, finish) = streamed_calls(&server, body).await;
        assert_eq!(finish, "tool_calls");
        assert_eq!(content, "");
        assert_eq!(streamed.len(), calls.len());
        for (s, w) in streamed.iter().zip(calls) {
            assert_eq!(s["function"], w["function"]);
            assert!(s["id"].as_str().unwrap().starts_with("call_"));
        }
    }
    // Several calls allowed: those that came are valid; a section cut by
    // `max_tokens` is text.
    let (status, resp) = server
        .post("/v1/chat/completions", ask(json!("required"), true))
        .await;
    assert_eq!(status, 200, "{resp}");
    let c = &resp["choices"][0];
    match c["finish_reason"].as_str().unwrap() {
        "tool_calls" => {
            for call in c["message"]["tool_calls"].as_array().unwrap() {
                check_call(call, None);
            }
        }
        "length" => assert!(c["message"]["content"].is_string()),
        other => panic!("finish_reason {other}: {resp}"),
    }
    // `none`: no call, whatever the model writes.
    let (status, resp) = server
        .post("/v1/chat/completions", ask(json!("none"), true))
        .await;
    assert_eq!(status, 200);
    assert!(resp["choices"][0]["message"]["tool_calls"].is_null());
    assert_ne!(resp["choices"][0]["finish_reason"], "tool_calls");
}

#[tokio::test]
async fn tool_schemas_that_do_not_compile_name_their_tool() {
    let server = Server::start(&[]);
    let mut tools = weather_tools();
    tools[1]["function"]["parameters"]["properties"]["zone"] = json!({"type": "strnig"});
    for (choice, param) in [
        (json!("required"), "tools[1].function.parameters"),
        (
            json!({"type": "function", "function": {"name": "get_time"}}),
            "tools[1].function.parameters",
        ),
    ] {
        let (status, body) = server
            .post(
                "/v1/chat/completions",
                json!({"messages": [{"role": "user", "content": "x"}], "tools": tools,
                   "tool_choice": choice}),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["param"], param, "{body}");
    }
}

#[tokio::test]
async fn an_assistant_prefix_is_continued() {
    let server = Server::start(&[]);
    let messages = |prefix: Value| {
        json!([{"role": "user", "content": "Count."},
               {"role": "assistant", "content": "One, two,", "prefix": prefix}])
    };
    // The continuation is what the prompt ending in the prefix gives: the
    // same as a completion of the rendered text cut there.
    let (status, a) = server
        .post(
            "/v1/chat/completions",
            json!({"messages": messages(json!(true)), "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(status, 200, "{a}");
    let (_, b) = server
        .post(
            "/v1/chat/completions",
            json!({"messages": messages(json!(null)), "continue_final_message": true,
               "add_generation_prompt": false, "max_tokens": 8, "temperature": 0}),
        )
        .await;
    assert_eq!(a["choices"][0]["message"], b["choices"][0]["message"]);
    let (_, c) = server.post("/v1/completions",
        json!({"prompt": "<｜begin▁of▁sentence｜><｜User｜>Count.<｜Assistant｜></think>One, two,",
               "add_special_tokens": false, "max_tokens": 8, "temperature": 0}),
    )
    .await;
    assert_eq!(
        a["choices"][0]["message"]["content"],
        c["choices"][0]["text"]
    );
    assert_eq!(a["usage"]["prompt_tokens"], c["usage"]["prompt_tokens"]);
    // Only the last message, an assistant's, can be a prefix.
    for (body, param) in [
        (
            json!({"messages": [{"role": "user", "content": "x", "prefix": true}]}),
            "messages[0].prefix",
        ),
        (
            json!({"messages": [{"role": "assistant", "content": "x", "prefix": true},
                                {"role": "user", "content": "y"}]}),
            "messages[0].prefix",
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "continue_final_message": true}),
            "continue_final_message",
        ),
        (
            json!({"messages": messages(json!(true)), "add_generation_prompt": true}),
            "add_generation_prompt",
        ),
    ] {
        let (status, resp) = server.post("/v1/chat/completions", body).await;
        assert_eq!(status, 400, "{resp}");
        assert_eq!(resp["error"]["param"], param, "{resp}");
    }
}

#[tokio::test]
async fn with_thinking_on_the_grammar_holds_only_the_answer() {
    let server = Server::start(&[]);
    let (_, tok) = server
        .post(
            "/tokenize",
            json!({"prompt": "</think>", "add_special_tokens": false}),
        )
        .await;
    let end_think = tok["tokens"][0].as_u64().unwrap();
    // Thinking is free: here a bias makes the model close it after a few
    // tokens, which a grammar from the first token would have forbidden.
    let body = chat(json!({
        "chat_template_kwargs": {"thinking": true},
        "logit_bias": {end_think.to_string(): 30},
        "response_format": {"type": "json_schema", "json_schema": {
            "name": "person", "schema": person_schema()}},
    }));
    let (status, resp) = server.post("/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{resp}");
    let c = &resp["choices"][0];
    // `</think>` came first (a grammar from the first token forbids it, and
    // the JSON would then be reasoning); the answer after it is held.
    assert!(
        resp["usage"]["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
            >= 1
    );
    check_person(c["message"]["content"].as_str().unwrap());
    assert_eq!(c["finish_reason"], "stop");
    let streamed = stream_chat(&server, body).await;
    assert_eq!(streamed[0].0, c["message"]["content"].as_str().unwrap());
}
