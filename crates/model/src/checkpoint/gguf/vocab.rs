//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`
//! and `tokenizer.chat_template`), read as plain data for the engine,
//! which builds the tokenizer from it.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::gguf_error;
use crate::error::{ModelError, Result};

/// `tokenizer.ggml.*` of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` for byte-level BPE.
    pub model: String,
    /// `tokenizer.ggml.pre`: llama.cpp's name of the pre-tokenizer.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte;
    /// empty when the file does not say.
    pub token_types: Vec<i32>,
    /// `"left right"`, by rank.
    pub merges: Vec<String>,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    /// `tokenizer.ggml.eot_token_id` and `eom_token_id`: the ends of a turn
    /// and of a message, which end generation as eos does (llama.cpp counts
    /// them among its end-of-generation tokens; GLM's files name `<|user|>`
    /// and `<|observation|>` there, and eos is `<|endoftext|>`).
    pub end_of_turn_ids: Vec<u32>,
    /// Every id the file names as a special token (`bos`, `eos`, `eot`,
    /// `eom`, `unk`, `sep`, `padding`, `mask`): Hugging Face's special
    /// tokens, where the token types mark any added token that looks
    /// special as control.
    pub named_ids: Vec<u32>,
    pub add_bos_token: Option<bool>,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the metadata of `path` (the first file of a split set).
    pub fn read(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let content = Content::read(&mut std::io::BufReader::new(file))
            .map_err(|e| gguf_error(path, format!("not a readable GGUF file: {e}")))?;
        let meta = &content.metadata;
        let err =
            |key: &str, message: &str| gguf_error(path, format!("metadata key `{key}` {message}"));
        let string = |key: &str| -> Result<Option<String>> {
            match meta.get(key) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(err(key, "must be a string")),
            }
        };
        let strings = |key: &str| -> Result<Vec<String>> {
            match meta.get(key) {
                None => Ok(Vec::new()),
                Some(Value::Array(items)) => items
                    .iter()
                    .map(|v| match v {
                        Value::String(s) => Ok(s.clone()),
                        _ => Err(err(key, "must be an array of strings")),
                    })
                    .collect(),
                Some(_) => Err(err(key, "must be an array of strings")),
            }
        };
        let id = |key: &str| -> Result<Option<u32>> {
            match meta.get(key) {
                None => Ok(None),
                Some(Value::U32(v)) => Ok(Some(*v)),
                Some(Value::I32(v)) if *v >= 0 => Ok(Some(*v as u32)),
                Some(_) => Err(err(key, "must be a token id")),
            }
        };
        let token_types = match meta.get("tokenizer.ggml.token_type") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(t) => Ok(*t),
                    Value::U32(t) => Ok(*t as i32),
                    _ => Err(err(
                        "tokenizer.ggml.token_type",
                        "must be an array of integers",
                    )),
                })
                .collect::<Result<_>>()?,
            Some(_) => return Err(err("tokenizer.ggml.token_type", "must be an array")),
        };
        let model_key = "tokenizer.ggml.model";
        Ok(GgufVocab {
            model: string(model_key)?.ok_or_else(|| err(model_key, "is missing"))?,
            pre: string("tokenizer.ggml.pre")?,
            tokens: strings("tokenizer.ggml.tokens")?,
            token_types,
            merges: strings("tokenizer.ggml.merges")?,
            bos_token_id: id("tokenizer.ggml.bos_token_id")?,
            eos_token_id: id("tokenizer.ggml.eos_token_id")?,
            end_of_turn_ids: ["eot", "eom"]
                .iter()
                .filter_map(|name| id(&format!("tokenizer.ggml.{name}_token_id")).transpose())
                .collect::<Result<_>>()?,
            named_ids: [
                "bos",
                "eos",
                "eot",
                "eom",
                "unknown",
                "seperator",
                "padding",
                "mask",
            ]
            .iter()
            .filter_map(|name| id(&format!("tokenizer.ggml.{name}_token_id")).transpose())
            .collect::<Result<_>>()?,
            add_bos_token: match meta.get("tokenizer.ggml.add_bos_token") {
                None => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(_) => return Err(err("tokenizer.ggml.add_bos_token", "must be a bool")),
            },
            chat_template: string("tokenizer.chat_template")?,
        })
    }
}
