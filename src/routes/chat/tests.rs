//! The chat shape fed a chosen text stream: the JSON of the whole response
//! and of the SSE chunks, with tool calls (the embedded model writes none
//! by itself).

use std::collections::HashSet;

use ferroseek_engine::{ChoiceOutput, ToolCallFormat, ToolCallOptions};
use serde_json::{json, Value};

use super::*;
use crate::cli::ApiKey;
use crate::metrics::Metrics;
use crate::state::Settings;

const CALLS: &str = "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{\"city\": \"Paris\"}<｜tool▁call▁end｜><｜tool▁call▁begin｜>get_time<｜tool▁sep｜>{\"tz\": \"CET\"}<｜tool▁call▁end｜><｜tool▁calls▁end｜>";

fn shape() -> ChatShape {
    let state = AppState::new(
        Settings {
            served_names: vec!["m".into()],
            root: "m".into(),
            api_key: None::<ApiKey>,
            max_body_size: 1024,
            body_read_timeout: std::time::Duration::from_secs(30),
            cors_allow_origin: Vec::new(),
        },
        Metrics::new().unwrap(),
    );
    ChatShape::new(state, 1, false)
}

fn output(parallel: bool) -> ChoiceOutput {
    ChoiceOutput::new(true, false).with_tool_calls(ToolCallOptions {
        format: ToolCallFormat::DeepSeekV31,
        functions: HashSet::from(["get_weather".into(), "get_time".into()]),
        parallel,
    })
}

fn head() -> Head {
    Head {
        id: "chatcmpl-1".into(),
        model: "m".into(),
        created: 1,
    }
}

/// `text` in pieces of `size` characters through a choice's output and the
/// shape: the parts, the stream's as the driver makes them.
fn parts(text: &str, size: usize, reason: &str, parallel: bool) -> Vec<ChunkChoice> {
    let mut shape = shape();
    let mut out = output(parallel);
    let chars: Vec<char> = text.chars().collect();
    let pieces: Vec<String> = chars.chunks(size).map(|c| c.iter().collect()).collect();
    let (last, rest) = pieces.split_last().unwrap();
    let mut parts = shape.opening();
    for piece in rest {
        parts.extend(shape.token(0, 0, out.token(piece), None).unwrap());
    }
    parts.extend(shape.finished(0, out.finish(last), reason));
    parts
}

/// The non-streamed response's first choice.
fn whole(text: &str, reason: &str, parallel: bool) -> Value {
    let shape = shape();
    let mut choice = shape.empty(0);
    for part in parts(text, 1000, reason, parallel) {
        ChatShape::add(&mut choice, part);
    }
    let response = shape.response(&head(), vec![choice], Usage::new(1, 1, 0, 0));
    serde_json::to_value(response).unwrap()["choices"][0].clone()
}

/// The streamed chunks' JSON.
fn chunks(text: &str, size: usize) -> Vec<Value> {
    let shape = shape();
    parts(text, size, "stop", true)
        .into_iter()
        .map(|part| match shape.chunk(&head(), vec![part], None) {
            SseData::Json(s) => serde_json::from_str(&s).unwrap(),
            SseData::Done => Value::Null,
        })
        .collect()
}

#[test]
fn a_whole_response_carries_the_calls_and_null_content() {
    let choice = whole(CALLS, "stop", true);
    assert_eq!(choice["finish_reason"], "tool_calls");
    let message = &choice["message"];
    assert_eq!(message["content"], Value::Null);
    let calls = message["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["type"], "function");
    assert!(calls[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_ne!(calls[0]["id"], calls[1]["id"]);
    assert_eq!(
        calls[0]["function"],
        json!({"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"})
    );
    assert_eq!(
        calls[1]["function"],
        json!({"name": "get_time", "arguments": "{\"tz\":\"CET\"}"})
    );
}

#[test]
fn text_around_calls_is_content_and_length_stays_length() {
    let choice = whole(
        &format!("<think>hm</think>Sure. {CALLS} Done."),
        "length",
        true,
    );
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(choice["message"]["content"], "Sure.  Done.");
    assert_eq!(choice["message"]["reasoning_content"], "hm");
    assert_eq!(choice["message"]["tool_calls"].as_array().unwrap().len(), 2);
    // Without calls, no `tool_calls` key and `stop` stays `stop`.
    let plain = whole("just text", "stop", true);
    assert_eq!(plain["finish_reason"], "stop");
    assert_eq!(plain["message"]["content"], "just text");
    assert!(plain["message"].get("tool_calls").is_none());
}

#[test]
fn without_parallel_calls_one_call_is_returned() {
    let choice = whole(CALLS, "stop", false);
    let calls = choice["message"]["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(choice["message"]["content"], Value::Null);
}

#[test]
fn streamed_calls_have_openai_deltas_and_add_up_to_the_whole() {
    let text = format!("<think>hm</think>Sure. {CALLS}");
    for size in [1, 3, 7, 1000] {
        let chunks = chunks(&text, size);
        let mut content = String::new();
        let mut reasoning = String::new();
        // Per call index: id, name, arguments.
        let mut calls: Vec<(String, String, String)> = Vec::new();
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            let delta = &chunk["choices"][0]["delta"];
            content += delta["content"].as_str().unwrap_or_default();
            reasoning += delta["reasoning_content"].as_str().unwrap_or_default();
            let Some(pieces) = delta.get("tool_calls") else {
                continue;
            };
            assert_eq!(pieces.as_array().unwrap().len(), 1);
            let piece = &pieces[0];
            let k = piece["index"].as_u64().unwrap() as usize;
            if let Some(id) = piece.get("id") {
                assert_eq!(k, calls.len());
                assert_eq!(piece["type"], "function");
                assert_eq!(piece["function"]["arguments"], "");
                calls.push((
                    id.as_str().unwrap().into(),
                    piece["function"]["name"].as_str().unwrap().into(),
                    String::new(),
                ));
            } else {
                let mut keys: Vec<_> = piece.as_object().unwrap().keys().collect();
                keys.sort_unstable();
                assert_eq!(keys, ["function", "index"]);
                assert!(piece["function"].get("name").is_none());
                calls[k].2 += piece["function"]["arguments"].as_str().unwrap();
            }
        }
        assert_eq!(content, "Sure. ", "size {size}");
        assert_eq!(reasoning, "hm");
        let last = &chunks.last().unwrap()["choices"][0];
        assert_eq!(last["finish_reason"], "tool_calls");
        let want = whole(&text, "stop", true);
        let want_calls = want["message"]["tool_calls"].as_array().unwrap();
        assert_eq!(calls.len(), want_calls.len());
        for ((id, name, arguments), want) in calls.iter().zip(want_calls) {
            assert!(id.starts_with("call_"));
            assert_eq!(want["function"]["name"], name.as_str());
            assert_eq!(want["function"]["arguments"], arguments.as_str());
        }
    }
}
