//! Helpers shared by the engine's integration tests: reading fixtures and
//! turning OpenAI-shaped JSON messages (as the fixtures store them) into
//! the engine's message types, the way the server does.

#![allow(dead_code)] // each test binary uses its own subset

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use ferroseek_engine::{ChatMessage, ContentPart, MessageContent, Role, ToolCall};
use serde_json::Value;

pub fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn repo_dir() -> PathBuf {
    crate_dir().join("../..")
}

pub fn read_json(relative_to_crate: &str) -> Result<Value> {
    let path = crate_dir().join(relative_to_crate);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn opt_str(msg: &Value, key: &str) -> Result<Option<String>> {
    match msg.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => bail!("`{key}` must be a string, got {other}"),
    }
}

/// One OpenAI chat message as the engine's [`ChatMessage`].
pub fn message(msg: &Value) -> Result<ChatMessage> {
    let role = match msg.get("role").and_then(Value::as_str) {
        Some("system") => Role::System,
        Some("developer") => Role::Developer,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool") => Role::Tool,
        other => bail!("unknown role {other:?}"),
    };
    let content = match msg.get("content") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(MessageContent::Text(s.clone())),
        Some(Value::Array(parts)) => Some(MessageContent::Parts(
            parts
                .iter()
                .map(|p| {
                    match (
                        p.get("type").and_then(Value::as_str),
                        p.get("text").and_then(Value::as_str),
                    ) {
                        (Some("text"), Some(text)) => Ok(ContentPart::Text(text.to_owned())),
                        _ => Err(anyhow!("unsupported content part {p}")),
                    }
                })
                .collect::<Result<_>>()?,
        )),
        Some(other) => bail!("bad content {other}"),
    };
    let tool_calls = match msg.get("tool_calls") {
        None | Some(Value::Null) => None,
        Some(Value::Array(calls)) => Some(
            calls
                .iter()
                .map(|c| {
                    let f = c
                        .get("function")
                        .ok_or_else(|| anyhow!("tool call without function"))?;
                    Ok(ToolCall {
                        id: opt_str(c, "id")?.unwrap_or_default(),
                        name: opt_str(f, "name")?.unwrap_or_default(),
                        arguments: opt_str(f, "arguments")?.unwrap_or_default(),
                    })
                })
                .collect::<Result<_>>()?,
        ),
        Some(other) => bail!("bad tool_calls {other}"),
    };
    Ok(ChatMessage {
        role,
        content,
        name: opt_str(msg, "name")?,
        tool_calls,
        tool_call_id: opt_str(msg, "tool_call_id")?,
        reasoning_content: opt_str(msg, "reasoning_content")?,
    })
}

pub fn messages(list: &Value) -> Result<Vec<ChatMessage>> {
    list.as_array()
        .ok_or_else(|| anyhow!("messages must be a list"))?
        .iter()
        .map(message)
        .collect()
}

/// Where the first difference between two texts is, for failure messages.
pub fn first_difference(want: &str, got: &str) -> String {
    let at = want
        .char_indices()
        .zip(got.chars())
        .find(|((_, a), b)| a != b)
        .map_or(want.len().min(got.len()), |((i, _), _)| i);
    let from = want[..at]
        .char_indices()
        .rev()
        .nth(40)
        .map_or(0, |(i, _)| i);
    let excerpt = |s: &str| {
        s.get(from..)
            .unwrap_or(s)
            .chars()
            .take(120)
            .collect::<String>()
    };
    format!(
        "first difference at byte {at} (lengths {} and {}):\n  want: {:?}\n  got:  {:?}",
        want.len(),
        got.len(),
        excerpt(want),
        excerpt(got)
    )
}
