//! `/v1/models`, `/tokenize` and `/detokenize`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::chat::ChatMessageIn;

/// `GET /v1/models`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    pub data: Vec<ModelCard>,
}

/// One served model.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelCard {
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// When the server loaded it (Unix seconds).
    pub created: u64,
    pub owned_by: String,
    /// What `--model` named (a hub id, a folder, or the embedded model).
    pub root: String,
    /// Longest sequence (prompt + generated tokens) the server serves.
    pub max_model_len: usize,
}

/// `POST /tokenize`: a text prompt or a conversation.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct TokenizeRequest {
    pub model: Option<String>,
    /// Text to tokenize (give this or `messages`).
    pub prompt: Option<String>,
    /// A conversation, rendered with the chat template first.
    pub messages: Option<Vec<ChatMessageIn>>,
    /// With `prompt`: add the tokenizer's special tokens (BOS). Default true.
    pub add_special_tokens: Option<bool>,
    /// With `messages`: end with the assistant's turn opener. Default true.
    pub add_generation_prompt: Option<bool>,
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<serde_json::Map<String, serde_json::Value>>,
    /// Also return each token's text.
    pub return_token_strs: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TokenizeResponse {
    pub count: usize,
    pub max_model_len: usize,
    pub tokens: Vec<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_strs: Option<Vec<String>>,
}

/// `POST /detokenize`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
pub struct DetokenizeRequest {
    pub model: Option<String>,
    pub tokens: Vec<u32>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DetokenizeResponse {
    pub prompt: String,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`.
    pub status: &'static str,
}
