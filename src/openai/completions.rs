//! `POST /v1/completions` (the legacy text API that benchmarks and eval
//! harnesses still use): prompts as text or token ids, `echo`, and the
//! integer `logprobs` form.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::common::{SamplingRequest, TokenMap, Usage};

/// A completion request. Unknown fields are ignored; `null` means "the default".
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptField,
    /// How to sample, when to stop, how to stream.
    #[serde(flatten)]
    pub sampling: SamplingRequest,
    /// Return the log-probability of each token and this many alternatives (0..=20).
    pub logprobs: Option<i64>,
    /// Put the prompt before the generated text (and its tokens in `logprobs`).
    pub echo: Option<bool>,
    /// Only `best_of` equal to `n` is served.
    pub best_of: Option<i64>,
    /// Not served; must be empty when given.
    pub suffix: Option<String>,
    /// Add the tokenizer's special tokens (BOS) to text prompts. Default true.
    pub add_special_tokens: Option<bool>,
}

/// `prompt`: a string, a list of strings, a list of token ids, or a list of
/// lists of token ids. Each string or id list is a separate prompt.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

const PROMPT_SHAPES: &str =
    "a string, a list of strings, a list of token ids or a list of lists of token ids";

impl<'de> Deserialize<'de> for PromptField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = PromptField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(PROMPT_SHAPES)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PromptField, E> {
                Ok(PromptField::Text(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PromptField, A::Error> {
                let mut items = Vec::new();
                while let Some(v) = seq.next_element::<serde_json::Value>()? {
                    items.push(v);
                }
                classify(items).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

fn token_id(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn classify(items: Vec<serde_json::Value>) -> Result<PromptField, String> {
    use serde_json::Value;
    let Some(first) = items.first() else {
        return Ok(PromptField::Texts(Vec::new()));
    };
    let bad = |i: usize| format!("item {i} does not fit: `prompt` must be {PROMPT_SHAPES}");
    match first {
        Value::String(_) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s),
                _ => Err(bad(i)),
            })
            .collect::<Result<_, _>>()
            .map(PromptField::Texts),
        Value::Number(_) => items
            .iter()
            .enumerate()
            .map(|(i, v)| token_id(v).ok_or_else(|| format!("item {i} ({v}) is not a token id")))
            .collect::<Result<_, _>>()
            .map(PromptField::Ids),
        Value::Array(_) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::Array(ids) => ids
                    .iter()
                    .enumerate()
                    .map(|(j, v)| {
                        token_id(v)
                            .ok_or_else(|| format!("item [{i}][{j}] ({v}) is not a token id"))
                    })
                    .collect::<Result<Vec<u32>, _>>(),
                _ => Err(bad(i)),
            })
            .collect::<Result<_, _>>()
            .map(PromptField::IdLists),
        _ => Err(bad(0)),
    }
}

/// A completion.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionResponse {
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub system_fingerprint: String,
    pub choices: Vec<CompletionChoice>,
    /// Absent on stream chunks unless `stream_options.include_usage`; then
    /// `null` on every chunk but the usage chunk.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Usage>)]
    pub usage: Option<Option<Usage>>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CompletionChoice {
    pub index: usize,
    pub text: String,
    pub logprobs: Option<CompletionLogprobs>,
    pub finish_reason: Option<String>,
}

/// The legacy log-probability form: parallel lists, one entry per token.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct CompletionLogprobs {
    pub tokens: Vec<String>,
    /// `null` for the first prompt token (nothing predicts it).
    pub token_logprobs: Vec<Option<f32>>,
    pub top_logprobs: Vec<Option<TokenMap>>,
    /// Character offset of each token in `text`.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    pub fn append(&mut self, mut other: CompletionLogprobs) {
        self.tokens.append(&mut other.tokens);
        self.token_logprobs.append(&mut other.token_logprobs);
        self.top_logprobs.append(&mut other.top_logprobs);
        self.text_offset.append(&mut other.text_offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prompt(json: &str) -> Result<PromptField, String> {
        serde_json::from_str::<PromptField>(json).map_err(|e| e.to_string())
    }

    #[test]
    fn prompt_takes_all_four_shapes() {
        assert_eq!(prompt(r#""hi""#), Ok(PromptField::Text("hi".into())));
        assert_eq!(
            prompt(r#"["a", "b"]"#),
            Ok(PromptField::Texts(vec!["a".into(), "b".into()]))
        );
        assert_eq!(prompt("[1, 2, 3]"), Ok(PromptField::Ids(vec![1, 2, 3])));
        assert_eq!(
            prompt("[[1], [2, 3]]"),
            Ok(PromptField::IdLists(vec![vec![1], vec![2, 3]]))
        );
    }

    #[test]
    fn mixed_or_negative_prompts_are_refused() {
        assert!(prompt(r#"["a", 1]"#).is_err());
        assert!(prompt("[1, -2]").unwrap_err().contains("not a token id"));
        assert!(prompt("[1.5]").is_err());
        assert!(prompt("[[1], 2]").is_err());
        assert!(prompt("{}").is_err());
        assert!(prompt("[4294967296]").is_err());
    }
}
