//! `POST /v1/chat/completions`: the request as clients send it, and the
//! response and stream chunks in OpenAI's shape (with DeepSeek's
//! `reasoning_content`).

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{SamplingRequest, Usage};

/// A chat completion request. Unknown fields are ignored; `null` means
/// "the default".
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatCompletionRequest {
    /// The served model name; may be left out when the server serves one model.
    pub model: Option<String>,
    #[schema(min_items = 1)]
    pub messages: Vec<ChatMessageIn>,
    /// How to sample, when to stop, how to stream. `max_tokens` is
    /// deprecated by OpenAI in favour of `max_completion_tokens`, which wins
    /// when both are set.
    #[serde(flatten)]
    pub sampling: SamplingRequest,
    pub max_completion_tokens: Option<i64>,
    /// Return the log-probability of each generated token.
    pub logprobs: Option<bool>,
    /// Alternatives per token, 0..=20; needs `logprobs: true`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<i64>,
    /// Function tools, `{"type": "function", "function": {"name", "description",
    /// "parameters", "strict"}}`; passed to the chat template as given.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<serde_json::Value>>,
    /// `none` (calls stay text), `auto` (the default), `required`, or
    /// `{"type": "function", "function": {"name": ...}}`.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<serde_json::Value>,
    /// Default true; false returns at most one tool call per choice.
    pub parallel_tool_calls: Option<bool>,
    /// Extra variables for the chat template, e.g. `{"thinking": true}` (vLLM extension).
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// DeepSeek's switch for thinking mode: `{"type": "enabled"}` or `{"type": "disabled"}`.
    pub thinking: Option<ThinkingOption>,
    /// `low`, `medium` or `high`; given to templates that read `reasoning_effort`.
    pub reasoning_effort: Option<String>,
    /// End the prompt with the assistant's turn opener. Default true (vLLM extension).
    pub add_generation_prompt: Option<bool>,
    /// Continue the last message, an assistant's, instead of starting a new
    /// turn (vLLM extension; the same as DeepSeek's `prefix: true` on it).
    pub continue_final_message: Option<bool>,
}

/// DeepSeek's `thinking` field.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ThinkingOption {
    /// `enabled` or `disabled`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ChatMessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    pub content: Option<ContentIn>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<ToolCallIn>>,
    pub tool_call_id: Option<String>,
    /// An assistant message's reasoning (DeepSeek's field).
    pub reasoning_content: Option<String>,
    /// On the last message, an assistant's: the model continues its content
    /// rather than starting a new turn (DeepSeek's chat prefix completion).
    pub prefix: Option<bool>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum ContentIn {
    Text(String),
    Parts(Vec<ContentPartIn>),
}

impl<'de> Deserialize<'de> for ContentIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ContentIn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of content parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<ContentIn, E> {
                Ok(ContentIn::Text(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ContentIn, A::Error> {
                let mut parts = Vec::new();
                while let Some(p) = seq.next_element::<ContentPartIn>()? {
                    parts.push(p);
                }
                Ok(ContentIn::Parts(parts))
            }
        }
        d.deserialize_any(V)
    }
}

/// One content part; only `{"type": "text", "text": ...}` is served.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct ContentPartIn {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// A tool call in an assistant message of the history.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct ToolCallIn {
    pub id: Option<String>,
    pub function: FunctionCallIn,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct FunctionCallIn {
    pub name: String,
    /// The arguments as a JSON string (an object is accepted and serialized).
    #[schema(value_type = String)]
    pub arguments: serde_json::Value,
}

/// A chat completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionResponse {
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChatChoice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatChoice {
    pub index: usize,
    pub message: ChatMessageOut,
    pub logprobs: Option<ChatLogprobs>,
    /// `stop`, `length`, or `tool_calls` when the choice called tools.
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatMessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    pub content: Option<String>,
    /// Text the model wrote between `<think>` and `</think>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    pub refusal: Option<String>,
    /// The calls the model made; `content` is then only the text around them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One call the model made.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCallOut {
    /// `call_…`, unique per call.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub function: FunctionCallOut,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionCallOut {
    pub name: String,
    /// The arguments as a JSON string (an object).
    pub arguments: String,
}

/// A piece of a call in a stream: the first of each call carries its `id`,
/// `type` and `function.name` (with empty `arguments`); the next ones more
/// of its `arguments`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ToolCallChunk {
    /// The call's place among the choice's calls.
    pub index: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    pub function: FunctionChunk,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FunctionChunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub arguments: String,
}

/// Log-probabilities of a choice's tokens.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct ChatLogprobs {
    pub content: Vec<ChatTokenLogprob>,
    pub refusal: Option<Vec<ChatTokenLogprob>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    /// The token's UTF-8 bytes (a token may hold part of a character).
    pub bytes: Option<Vec<u8>>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Option<Vec<u8>>,
}

/// One server-sent event of a streamed chat completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<ChunkChoice>,
    /// Absent unless `stream_options.include_usage`; then `null` on every
    /// chunk but the last, which carries the usage and no choices.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ChunkChoice {
    pub index: usize,
    pub delta: Delta,
    pub logprobs: Option<ChatLogprobs>,
    pub finish_reason: Option<String>,
}

/// What a chunk adds to a choice.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct Delta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallChunk>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_is_a_string_or_parts() {
        let m: ChatMessageIn =
            serde_json::from_str(r#"{"role": "user", "content": "hi"}"#).unwrap();
        assert_eq!(m.content, Some(ContentIn::Text("hi".into())));
        let m: ChatMessageIn = serde_json::from_str(
            r#"{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}"#,
        )
        .unwrap();
        assert!(matches!(m.content, Some(ContentIn::Parts(p)) if p.len() == 2));
        let m: ChatMessageIn =
            serde_json::from_str(r#"{"role": "assistant", "content": null}"#).unwrap();
        assert_eq!(m.content, None);
        assert!(
            serde_json::from_str::<ChatMessageIn>(r#"{"role": "user", "content": 3}"#)
                .unwrap_err()
                .to_string()
                .contains("a string or a list of content parts")
        );
    }

    #[test]
    fn nulls_mean_defaults_and_unknown_fields_are_ignored() {
        let r: ChatCompletionRequest = serde_json::from_str(
            r#"{"model": null, "messages": [], "temperature": null, "frobnicate": {"x": 1}}"#,
        )
        .unwrap();
        assert!(r.model.is_none() && r.sampling.temperature.is_none());
    }

    #[test]
    fn final_chunk_has_an_empty_delta_and_null_usage_when_asked() {
        let chunk = ChatCompletionChunk {
            id: "c".into(),
            object: "chat.completion.chunk",
            created: 1,
            model: "m".into(),
            system_fingerprint: "fp".into(),
            choices: vec![ChunkChoice {
                index: 0,
                delta: Delta::default(),
                logprobs: None,
                finish_reason: Some("stop".into()),
            }],
            usage: Some(None),
        };
        let v = serde_json::to_value(&chunk).unwrap();
        assert_eq!(v["choices"][0]["delta"], serde_json::json!({}));
        assert!(v.as_object().unwrap().contains_key("usage") && v["usage"].is_null());
    }
}
