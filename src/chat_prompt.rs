//! From an OpenAI conversation to prompt token ids: check and convert the
//! messages, gather the template variables (`chat_template_kwargs`,
//! DeepSeek's `thinking`, `reasoning_effort`), render the model's chat
//! template and tokenize (on a blocking thread: a long conversation takes
//! a while).

use std::collections::HashSet;

use ferroseek_engine::{ChatInput, ChatMessage, ContentPart, MessageContent, Role, ToolCall};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::openai::chat::{ChatMessageIn, ContentIn, ThinkingOption};
use crate::state::Ready;
use crate::tokens::off_runtime;
use ferroseek_engine::output::prompt_opens_reasoning;

/// A rendered and tokenized conversation.
#[derive(Debug)]
pub struct ChatPrompt {
    pub text: String,
    pub ids: Vec<u32>,
    /// The prompt ends inside `<think>`: the output starts as reasoning.
    pub opens_reasoning: bool,
}

/// What shapes the prompt besides the messages.
#[derive(Debug, Default)]
pub struct TemplateOptions<'a> {
    pub tools: Option<&'a [Value]>,
    pub add_generation_prompt: bool,
    pub chat_template_kwargs: Option<&'a Map<String, Value>>,
    pub thinking: Option<&'a ThinkingOption>,
    pub reasoning_effort: Option<&'a str>,
    /// The prompt ends inside the last message (an assistant's), which the
    /// model continues; see [`continues_final_message`].
    pub continue_final_message: bool,
}

/// Whether the request continues its last message: DeepSeek's `prefix:
/// true` on it, or vLLM's `continue_final_message`. Only the last message,
/// an assistant's with content, can be continued, and not together with
/// an explicit `add_generation_prompt: true`.
pub fn continues_final_message(
    messages: &[ChatMessageIn],
    continue_final_message: Option<bool>,
    add_generation_prompt: Option<bool>,
) -> Result<bool, ApiError> {
    let last = messages.len().saturating_sub(1);
    for (i, m) in messages.iter().enumerate() {
        if m.prefix == Some(true) && (i != last || m.role != "assistant") {
            return Err(ApiError::invalid(
                format!("messages[{i}].prefix"),
                format!("`messages[{i}].prefix` is only allowed on the last message, an `assistant` one"),
            ));
        }
    }
    let prefix = messages.last().is_some_and(|m| m.prefix == Some(true));
    let continuing = prefix || continue_final_message == Some(true);
    if !continuing {
        return Ok(false);
    }
    let param = if prefix {
        format!("messages[{last}].prefix")
    } else {
        "continue_final_message".to_string()
    };
    let Some(m) = messages.last().filter(|m| m.role == "assistant") else {
        return Err(ApiError::invalid(
            param,
            "only a last message from the `assistant` can be continued",
        ));
    };
    if m.content.is_none() {
        return Err(ApiError::invalid(
            format!("messages[{last}].content"),
            "the assistant message to continue needs `content`",
        ));
    }
    if add_generation_prompt == Some(true) {
        return Err(ApiError::invalid(
            "add_generation_prompt",
            "`add_generation_prompt` cannot be true when the last message is continued",
        ));
    }
    Ok(true)
}

/// The rendered conversation cut right after the last message's content,
/// as transformers' `continue_final_message` does: whatever the template
/// wrote after it (the end of the turn) goes.
fn cut_after_final(text: String, final_content: &str) -> Result<String, ApiError> {
    let trimmed = final_content.trim();
    let Some(at) = text.rfind(trimmed) else {
        return Err(ApiError::invalid(
            "messages",
            "the chat template does not render the last message's content as given, \
             so it cannot be continued",
        ));
    };
    // Keep the content's trailing whitespace when the template kept it.
    let lead_trimmed = final_content.trim_start();
    let end = if text[at..].starts_with(lead_trimmed) {
        at + lead_trimmed.len()
    } else {
        at + trimmed.len()
    };
    let mut text = text;
    text.truncate(end);
    Ok(text)
}

pub async fn build(
    ready: &Ready,
    messages: &[ChatMessageIn],
    options: &TemplateOptions<'_>,
) -> Result<ChatPrompt, ApiError> {
    let messages = convert_messages(messages)?;
    let kwargs = template_kwargs(options)?;
    let tools = options.tools.map(<[Value]>::to_vec);
    let add_generation_prompt = options.add_generation_prompt && !options.continue_final_message;
    let final_content = options
        .continue_final_message
        .then(|| {
            messages
                .last()
                .and_then(|m| m.content.as_ref())
                .map(text_of)
        })
        .flatten();
    let tokenizer = ready.engine.tokenizer().clone();
    let reasoning = ready.reasoning;
    off_runtime(move || {
        let input = ChatInput {
            messages: &messages,
            tools: tools.as_deref(),
            add_generation_prompt,
            kwargs: Some(&kwargs),
            template_name: None,
        };
        let mut text = tokenizer.apply_chat_template(&input)?;
        if let Some(content) = &final_content {
            text = cut_after_final(text, content)?;
        }
        let ids = tokenizer
            .encode(&text, false)
            .map_err(|e| ApiError::internal(format!("cannot tokenize the prompt: {e}")))?;
        Ok(ChatPrompt {
            opens_reasoning: reasoning && prompt_opens_reasoning(&text),
            text,
            ids,
        })
    })
    .await
}

/// `chat_template_kwargs`, plus `thinking` from DeepSeek's `thinking` field
/// and `reasoning_effort`, unless the kwargs already set them.
fn template_kwargs(options: &TemplateOptions<'_>) -> Result<Map<String, Value>, ApiError> {
    let mut kwargs = options.chat_template_kwargs.cloned().unwrap_or_default();
    if let Some(thinking) = options.thinking {
        let on = match thinking.kind.as_str() {
            "enabled" => true,
            "disabled" => false,
            other => {
                return Err(ApiError::invalid(
                    "thinking.type",
                    format!("`thinking.type` must be `enabled` or `disabled`, got `{other}`"),
                ))
            }
        };
        kwargs.entry("thinking").or_insert(Value::Bool(on));
    }
    if let Some(effort) = options.reasoning_effort {
        if !matches!(effort, "minimal" | "low" | "medium" | "high") {
            return Err(ApiError::invalid(
                "reasoning_effort",
                format!("`reasoning_effort` must be `minimal`, `low`, `medium` or `high`, got `{effort}`"),
            ));
        }
        kwargs
            .entry("reasoning_effort")
            .or_insert(Value::String(effort.to_string()));
    }
    Ok(kwargs)
}

fn parse_role(i: usize, role: &str) -> Result<Role, ApiError> {
    Ok(match role {
        "system" => Role::System,
        "developer" => Role::Developer,
        "user" => Role::User,
        "assistant" => Role::Assistant,
        "tool" => Role::Tool,
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!(
                    "`messages[{i}].role` must be `system`, `developer`, `user`, `assistant` or `tool`, got `{other}`"
                ),
            ))
        }
    })
}

/// Text parts joined into one string (DeepSeek's templates raise on lists of
/// parts, as they do under transformers); other part types are refused.
fn content_text(i: usize, content: &ContentIn) -> Result<String, ApiError> {
    match content {
        ContentIn::Text(text) => Ok(text.clone()),
        ContentIn::Parts(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                match (part.kind.as_str(), &part.text) {
                    ("text", Some(text)) => texts.push(text.as_str()),
                    ("text", None) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].text"),
                            format!("`messages[{i}].content[{j}]` is a text part without `text`"),
                        ))
                    }
                    (other, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            format!(
                                "`messages[{i}].content[{j}].type` is `{other}`; this model reads only `text` parts"
                            ),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
    }
}

pub fn convert_messages(messages: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least one message",
        ));
    }
    // The ids of the tool calls made so far: a `tool` message answers one.
    let mut call_ids = HashSet::new();
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        let role = parse_role(i, &m.role)?;
        let content = m.content.as_ref().map(|c| content_text(i, c)).transpose()?;
        let has_calls = m.tool_calls.as_ref().is_some_and(|c| !c.is_empty());
        if content.is_none() && !(role == Role::Assistant && has_calls) {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!(
                    "`messages[{i}].content` is required for a `{}` message",
                    role.as_str()
                ),
            ));
        }
        if m.tool_calls.is_some() && role != Role::Assistant {
            return Err(ApiError::invalid(
                format!("messages[{i}].tool_calls"),
                format!("`messages[{i}].tool_calls` is only allowed on `assistant` messages"),
            ));
        }
        if role == Role::Tool {
            check_tool_answer(i, m.tool_call_id.as_deref(), &call_ids)?;
        }
        let tool_calls = m.tool_calls.as_ref().map(|calls| {
            calls
                .iter()
                .enumerate()
                .map(|(j, call)| ToolCall {
                    id: call.id.clone().unwrap_or_else(|| format!("call_{i}_{j}")),
                    name: call.function.name.clone(),
                    arguments: match &call.function.arguments {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    },
                })
                .collect::<Vec<_>>()
        });
        call_ids.extend(tool_calls.iter().flatten().map(|c| c.id.clone()));
        out.push(ChatMessage {
            role,
            content: content.map(MessageContent::Text),
            name: m.name.clone(),
            tool_calls,
            tool_call_id: m.tool_call_id.clone(),
            reasoning_content: m.reasoning_content.clone(),
        });
    }
    Ok(out)
}

/// A converted message's text.
fn text_of(content: &MessageContent) -> String {
    match content {
        MessageContent::Text(text) => text.clone(),
        MessageContent::Parts(parts) => parts
            .iter()
            .map(|ContentPart::Text(t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// A `tool` message must say which earlier tool call it answers.
fn check_tool_answer(
    i: usize,
    tool_call_id: Option<&str>,
    call_ids: &HashSet<String>,
) -> Result<(), ApiError> {
    let param = format!("messages[{i}].tool_call_id");
    match tool_call_id {
        None => Err(ApiError::invalid(
            &param,
            format!(
                "`{param}` is required for a `tool` message: the id of the tool call it answers"
            ),
        )),
        Some(id) if !call_ids.contains(id) => Err(ApiError::invalid(
            &param,
            format!(
                "`{param}` is {id:?}, which answers no tool call of an earlier `assistant` message"
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn messages(json: &str) -> Vec<ChatMessageIn> {
        serde_json::from_str(json).unwrap()
    }

    fn param(json: &str) -> Option<String> {
        convert_messages(&messages(json)).unwrap_err().detail.param
    }

    #[test]
    fn bad_messages_name_the_field() {
        assert_eq!(param("[]").as_deref(), Some("messages"));
        assert_eq!(
            param(r#"[{"role": "wizard", "content": "x"}]"#).as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            param(r#"[{"role": "user"}]"#).as_deref(),
            Some("messages[0].content")
        );
        assert_eq!(
            param(r#"[{"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "image_url"}]}]"#)
                .as_deref(),
            Some("messages[1].content[0].type")
        );
        assert_eq!(
            param(r#"[{"role": "user", "content": "a", "tool_calls": []}]"#).as_deref(),
            Some("messages[0].tool_calls")
        );
    }

    #[test]
    fn a_tool_message_must_answer_an_earlier_call() {
        let call = r#"{"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "f", "arguments": "{}"}}]}"#;
        assert_eq!(
            param(&format!(r#"[{call}, {{"role": "tool", "content": "42"}}]"#)).as_deref(),
            Some("messages[2].tool_call_id")
        );
        let err = convert_messages(&messages(&format!(
            r#"[{call}, {{"role": "tool", "content": "42", "tool_call_id": "c2"}}]"#
        )))
        .unwrap_err();
        assert_eq!(
            err.detail.param.as_deref(),
            Some("messages[2].tool_call_id")
        );
        assert!(
            err.detail.message.contains("\"c2\""),
            "{}",
            err.detail.message
        );
        // A call made later does not count.
        assert_eq!(
            param(&format!(
                r#"[{{"role": "tool", "content": "42", "tool_call_id": "c1"}}, {call}]"#
            ))
            .as_deref(),
            Some("messages[0].tool_call_id")
        );
        // Several answers to several calls of one turn are fine.
        let two = r#"[{"role": "user", "content": "q"},
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
                {"id": "b", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
            {"role": "tool", "content": "1", "tool_call_id": "b"},
            {"role": "tool", "content": "2", "tool_call_id": "a"}]"#;
        assert_eq!(convert_messages(&messages(two)).unwrap().len(), 4);
    }

    #[test]
    fn parts_are_joined_and_tool_calls_kept() {
        let out = convert_messages(&messages(
            r#"[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
                  "function": {"name": "f", "arguments": {"x": 1}}}]},
                {"role": "tool", "content": "42", "tool_call_id": "c1"}]"#,
        ))
        .unwrap();
        assert_eq!(out[0].content, Some(MessageContent::Text("a\nb".into())));
        let calls = out[1].tool_calls.as_ref().unwrap();
        assert_eq!(
            (calls[0].name.as_str(), calls[0].arguments.as_str()),
            ("f", r#"{"x":1}"#)
        );
        assert_eq!(out[2].tool_call_id.as_deref(), Some("c1"));
    }

    #[test]
    fn thinking_and_effort_become_template_variables() {
        let thinking = ThinkingOption {
            kind: "enabled".into(),
        };
        let kwargs = template_kwargs(&TemplateOptions {
            thinking: Some(&thinking),
            reasoning_effort: Some("high"),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(kwargs["thinking"], Value::Bool(true));
        assert_eq!(kwargs["reasoning_effort"], "high");
        // Explicit kwargs win.
        let explicit: Map<String, Value> = serde_json::from_str(r#"{"thinking": false}"#).unwrap();
        let kwargs = template_kwargs(&TemplateOptions {
            thinking: Some(&thinking),
            chat_template_kwargs: Some(&explicit),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(kwargs["thinking"], Value::Bool(false));
        let bad = ThinkingOption {
            kind: "maybe".into(),
        };
        let e = template_kwargs(&TemplateOptions {
            thinking: Some(&bad),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.detail.param.as_deref(), Some("thinking.type"));
    }
}
