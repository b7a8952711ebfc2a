//! Pieces shared by the chat and the legacy completion APIs: the sampling
//! fields both requests have, `stop`, `stream_options`, `usage`, and the
//! helpers that turn fields a client may send in several shapes into one.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::ToSchema;

use crate::structured::{ResponseFormat, StructuredOutputs};

/// The fields chat and completion requests share, flattened into each:
/// how to sample, when to stop, how to stream. Unknown fields are ignored;
/// `null` means "the default".
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct SamplingRequest {
    /// Most tokens to generate per choice. Default: for chat, until the
    /// context is full; for completions 16, as OpenAI (there 0 with `echo`
    /// returns only the prompt and its log-probabilities).
    pub max_tokens: Option<i64>,
    /// [0, 2]; 0 is greedy. Default 1.
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// (0, 1]. Default 1.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Choices to generate (per prompt). Default 1.
    #[schema(minimum = 1)]
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// Up to 16 strings that end a choice (not included in the output).
    pub stop: Option<StopField>,
    /// [-2, 2].
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub presence_penalty: Option<f64>,
    /// [-2, 2].
    #[schema(minimum = -2.0, maximum = 2.0)]
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) to a bias in [-100, 100] added to its logit.
    pub logit_bias: Option<BTreeMap<String, f64>>,
    /// Same seed, same parameters, same prompt: same output.
    pub seed: Option<i64>,
    /// An end-user id, logged.
    pub user: Option<String>,
    /// Keep only the `top_k` most likely tokens (vLLM extension; -1 or 0 = all).
    pub top_k: Option<i64>,
    /// Drop tokens less likely than `min_p` times the most likely, [0, 1] (vLLM extension).
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub min_p: Option<f64>,
    /// (0, 10]; > 1 discourages repeating prompt or output tokens (vLLM extension).
    pub repetition_penalty: Option<f64>,
    /// Keep generating past end-of-sequence tokens (vLLM extension).
    pub ignore_eos: Option<bool>,
    /// Token ids that end a choice, besides the model's eos (vLLM extension).
    pub stop_token_ids: Option<Vec<u32>>,
    /// Drop special tokens from the output text. Default true (vLLM extension).
    pub skip_special_tokens: Option<bool>,
    /// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema":
    /// {"name", "schema", "strict"}}`: the output is JSON (matching the
    /// schema) by construction.
    pub response_format: Option<ResponseFormat>,
    /// One of `json`, `regex`, `choice`, `grammar` (Lark) or `json_object`
    /// the output must match (vLLM extension).
    pub structured_outputs: Option<StructuredOutputs>,
    /// vLLM's older spelling of `structured_outputs.json`.
    #[schema(value_type = Option<Object>)]
    pub guided_json: Option<serde_json::Value>,
    /// vLLM's older spelling of `structured_outputs.regex`.
    pub guided_regex: Option<String>,
    /// vLLM's older spelling of `structured_outputs.choice`.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM's older spelling of `structured_outputs.grammar`.
    pub guided_grammar: Option<String>,
}

/// `stop`: one string or a list of strings.
#[derive(Debug, Clone, PartialEq, ToSchema)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

impl StopField {
    pub fn as_slice(&self) -> &[String] {
        match self {
            StopField::One(s) => std::slice::from_ref(s),
            StopField::Many(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for StopField {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StopField;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<StopField, E> {
                Ok(StopField::One(s.to_string()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StopField, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(StopField::Many(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send one more chunk before `[DONE]` with the usage of the whole request.
    pub include_usage: Option<bool>,
}

/// Token counts of a request.
#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: PromptTokensDetails,
    pub completion_tokens_details: CompletionTokensDetails,
    /// DeepSeek's API: prompt tokens served from the prefix cache (the same
    /// count as `prompt_tokens_details.cached_tokens`)...
    pub prompt_cache_hit_tokens: usize,
    /// ...and those computed for this request.
    pub prompt_cache_miss_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct PromptTokensDetails {
    /// Prompt tokens whose cache entries were computed for an earlier request.
    pub cached_tokens: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, ToSchema)]
pub struct CompletionTokensDetails {
    /// Generated tokens that went to `reasoning_content`.
    pub reasoning_tokens: usize,
}

impl Usage {
    pub fn new(prompt: usize, completion: usize, cached: usize, reasoning: usize) -> Self {
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: cached,
            },
            completion_tokens_details: CompletionTokensDetails {
                reasoning_tokens: reasoning,
            },
            prompt_cache_hit_tokens: cached,
            prompt_cache_miss_tokens: prompt.saturating_sub(cached),
        }
    }
}

/// A token's alternatives in the legacy completions shape: a JSON object
/// from token text to log-probability, most likely first.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenMap(pub Vec<(String, f32)>);

impl Serialize for TokenMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        // Two ids can decode to the same text; keep the first (most likely).
        let mut seen = std::collections::HashSet::new();
        let entries: Vec<_> = self.0.iter().filter(|(t, _)| seen.insert(t)).collect();
        let mut map = s.serialize_map(Some(entries.len()))?;
        for (token, logprob) in entries {
            map.serialize_entry(token, logprob)?;
        }
        map.end()
    }
}

impl utoipa::PartialSchema for TokenMap {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        <BTreeMap<String, f32> as utoipa::PartialSchema>::schema()
    }
}

impl ToSchema for TokenMap {}

/// Unix time in seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A log-probability JSON can carry (`-inf` is not a JSON number).
pub fn finite_logprob(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_accepts_a_string_or_a_list() {
        let one: StopField = serde_json::from_str(r#""\n""#).unwrap();
        assert_eq!(one.as_slice(), ["\n"]);
        let many: StopField = serde_json::from_str(r#"["a", "b"]"#).unwrap();
        assert_eq!(many.as_slice(), ["a", "b"]);
        let err = serde_json::from_str::<StopField>("5").unwrap_err();
        assert!(err.to_string().contains("a string or a list of strings"));
    }

    #[test]
    fn token_map_serializes_as_an_object_in_order() {
        let map = TokenMap(vec![
            ("b".into(), -0.5),
            ("a".into(), -1.0),
            ("b".into(), -2.0),
        ]);
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            r#"{"b":-0.5,"a":-1.0}"#
        );
    }
}
