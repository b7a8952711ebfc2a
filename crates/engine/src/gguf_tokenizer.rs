//! The tokenizer of a GGUF file, rebuilt from its metadata as the
//! `tokenizer.json` the `tokenizers` crate reads: llama.cpp's converter
//! stores a byte-level BPE as `tokenizer.ggml.model = gpt2` with the
//! Hugging Face token strings, the merges by rank, the token types (3 =
//! control, 4 = user-defined: the added tokens; a token the metadata names
//! as BOS, EOS, padding, ... is special, as in Hugging Face's files, the
//! other control tokens such as `<｜User｜>` are not) and the name of the
//! pre-tokenizer (`tokenizer.ggml.pre`), whose regexes are llama.cpp's
//! (`src/llama-vocab.cpp`). Only the pre-tokenizers whose regexes we have
//! checked against a Hugging Face tokenizer are accepted; any other is an
//! error that says to pass the model's `tokenizer.json` folder instead.

use std::path::Path;

use ferroseek_model::GgufVocab;
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::tokenizer::Tokenizer;

/// The split regexes of a pre-tokenizer, applied in turn, each isolating
/// its matches.
fn pre_tokenizer_regexes(pre: &str) -> Option<&'static [&'static str]> {
    match pre {
        // DeepSeek-V3, R1 (and V3's successors): the same three splits as
        // their tokenizer.json.
        "deepseek-v3" => Some(&[
            r"\p{N}{1,3}",
            "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
            r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
        ]),
        _ => None,
    }
}

const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// `tokenizer.json` for `vocab`.
fn tokenizer_json(vocab: &GgufVocab) -> std::result::Result<Json, String> {
    if vocab.model != "gpt2" {
        return Err(format!(
            "`tokenizer.ggml.model` is `{}`; only `gpt2` (byte-level BPE) is supported",
            vocab.model
        ));
    }
    let pre = vocab.pre.as_deref().unwrap_or("default");
    let regexes = pre_tokenizer_regexes(pre).ok_or_else(|| {
        format!("`tokenizer.ggml.pre` `{pre}` is not supported yet (only deepseek-v3)")
    })?;
    if !vocab.token_types.is_empty() && vocab.token_types.len() != vocab.tokens.len() {
        return Err(
            "`tokenizer.ggml.token_type` and `tokenizer.ggml.tokens` differ in length".into(),
        );
    }
    let kind = |id: usize| vocab.token_types.get(id).copied().unwrap_or(1);
    let mut model_vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (id, token) in vocab.tokens.iter().enumerate() {
        match kind(id) {
            // The converter's padding up to the embedding's size.
            UNUSED => continue,
            t @ (CONTROL | USER_DEFINED) => added.push(json!({
                "id": id,
                "content": token,
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": t == CONTROL && vocab.named_ids.contains(&(id as u32)),
            })),
            _ => {}
        }
        model_vocab.insert(token.clone(), json!(id));
    }
    let splits: Vec<Json> = regexes
        .iter()
        .map(|r| json!({"type": "Split", "pattern": {"Regex": r}, "behavior": "Isolated", "invert": false}))
        .chain([json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false})])
        .collect();
    // BOS as Hugging Face's `LlamaTokenizerFast` adds it: always, even
    // before a text that starts with BOS.
    let bos = vocab
        .bos_token_id
        .filter(|_| vocab.add_bos_token == Some(true))
        .and_then(|id| Some((id, vocab.tokens.get(id as usize)?)));
    let post_processor = match bos {
        None => Json::Null,
        Some((id, bos)) => {
            let special = |type_id: u32| json!({"SpecialToken": {"id": bos, "type_id": type_id}});
            let sequence =
                |name: &str, type_id: u32| json!({"Sequence": {"id": name, "type_id": type_id}});
            json!({
                "type": "TemplateProcessing",
                "single": [special(0), sequence("A", 0)],
                "pair": [special(0), sequence("A", 0), special(1), sequence("B", 1)],
                "special_tokens": {bos.as_str(): {"id": bos, "ids": [id], "tokens": [bos]}},
            })
        }
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": splits},
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": false,
            "vocab": model_vocab,
            "merges": vocab.merges,
        },
    }))
}

/// The `tokenizer_config.json` the metadata amounts to: BOS and EOS by
/// name, `add_bos_token`, the chat template.
fn tokenizer_config(vocab: &GgufVocab) -> std::result::Result<Json, String> {
    let name = |id: Option<u32>, key: &str| -> std::result::Result<Json, String> {
        match id {
            None => Ok(Json::Null),
            Some(id) => vocab
                .tokens
                .get(id as usize)
                .map(|t| json!(t))
                .ok_or_else(|| format!("`{key}` {id} is not a token id")),
        }
    };
    Ok(json!({
        "bos_token": name(vocab.bos_token_id, "tokenizer.ggml.bos_token_id")?,
        "eos_token": name(vocab.eos_token_id, "tokenizer.ggml.eos_token_id")?,
        "add_bos_token": vocab.add_bos_token.unwrap_or(false),
        "chat_template": vocab.chat_template,
    }))
}

impl Tokenizer {
    /// The tokenizer and chat template a GGUF file (the first of a split
    /// set) carries; `chat_template`, a Jinja file, replaces the file's.
    pub fn from_gguf(path: &Path, chat_template: Option<&Path>) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidFile {
            path: path.to_path_buf(),
            reason,
        };
        let vocab = GgufVocab::read(path).map_err(|e| invalid(e.to_string()))?;
        let json = tokenizer_json(&vocab).map_err(invalid)?;
        let inner = tokenizers::Tokenizer::from_bytes(json.to_string().as_bytes())
            .map_err(|e| invalid(format!("its tokenizer does not build: {e}")))?;
        let config = tokenizer_config(&vocab).map_err(invalid)?;
        Self::assemble(inner, Some((path, config)), None, chat_template)
    }
}
