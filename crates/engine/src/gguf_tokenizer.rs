//! The tokenizer of a GGUF file, rebuilt from its metadata as the
//! `tokenizer.json` the `tokenizers` crate reads: llama.cpp's converter
//! stores a byte-level BPE as `tokenizer.ggml.model = gpt2` with the
//! Hugging Face token strings, the merges by rank, the token types (3 =
//! control, 4 = user-defined: the added tokens; a token the metadata names
//! as BOS, EOS, padding, ... is special, as in Hugging Face's files, the
//! other control tokens such as `<｜User｜>` are not) and the name of the
//! pre-tokenizer (`tokenizer.ggml.pre`), whose regexes are llama.cpp's
//! (`src/llama-vocab.cpp`), with its per-name flags (glm4 skips the merges
//! of a pre-token that is a token). Only the pre-tokenizers we have checked
//! against a `tokenizers` reference built from those regexes are accepted;
//! any other is an error that names the supported ones.

use std::path::Path;

use ferroseek_model::GgufVocab;
use serde_json::{json, Value as Json};

use crate::error::{Error, Result};
use crate::tokenizer::{Tokenizer, KIMI_PATTERN};

/// How llama.cpp pre-tokenizes for one `tokenizer.ggml.pre`
/// (`llama_vocab::impl::load` and `llm_tokenizer_bpe`).
struct PreTokenizer {
    /// Split regexes applied in turn, each isolating its matches inside the
    /// pieces the previous ones left.
    regexes: &'static [&'static str],
    /// A pre-token that is itself in the vocabulary is one token, whatever
    /// the merges would make of it.
    ignore_merges: bool,
}

/// The `tokenizer.ggml.pre` values we build, each checked against a
/// `tokenizers` reference (`tests/gguf_tokenizer.rs`).
const SUPPORTED_PRE: &str = "deepseek-v3, deepseek-llm, deepseek-coder, glm4, kimi-k2";

/// CJK ideographs, U+0800 up to them, and Hangul, as one run (deepseek-llm
/// and deepseek-coder).
const CJK_HANGUL: &str = "[\u{4e00}-\u{9fa5}\u{800}-\u{4e00}\u{ac00}-\u{d7ff}]+";

/// deepseek-llm's letters, as code points: the class holds compatibility
/// characters (U+1F7D, U+1FBE, U+2126, U+212A) that editors may normalize.
const DEEPSEEK_LLM_LETTERS: &str = concat!(
    "\\s?[A-Za-z\u{b5}\u{c0}-\u{d6}\u{d8}-\u{f6}\u{f8}-\u{1ba}\u{1bc}-\u{1bf}\u{1c4}-\u{293}",
    "\u{295}-\u{2af}\u{370}-\u{373}\u{376}\u{377}\u{37b}-\u{37d}\u{37f}\u{386}\u{388}-\u{38a}",
    "\u{38c}\u{38e}-\u{3a1}\u{3a3}-\u{3f5}\u{3f7}-\u{481}\u{48a}-\u{52f}\u{531}-\u{556}",
    "\u{10a0}-\u{10c5}\u{13a0}-\u{13f5}\u{13f8}-\u{13fd}\u{1c90}-\u{1cba}\u{1cbd}-\u{1cbf}",
    "\u{1d00}-\u{1d2b}\u{1d6b}-\u{1d77}\u{1d79}-\u{1d9a}\u{1e00}-\u{1f15}\u{1f18}-\u{1f1d}",
    "\u{1f20}-\u{1f45}\u{1f48}-\u{1f4d}\u{1f50}-\u{1f57}\u{1f59}\u{1f5b}\u{1f5d}\u{1f5f}-\u{1f7d}",
    "\u{1f80}-\u{1fb4}\u{1fb6}-\u{1fbc}\u{1fbe}\u{1fc2}-\u{1fc4}\u{1fc6}-\u{1fcc}\u{1fd0}-\u{1fd3}",
    "\u{1fd6}-\u{1fdb}\u{1fe0}-\u{1fec}\u{1ff2}-\u{1ff4}\u{1ff6}-\u{1ffc}\u{2102}\u{2107}",
    "\u{210a}-\u{2113}\u{2115}\u{2119}-\u{211d}\u{2124}\u{2126}\u{2128}\u{212a}-\u{212d}",
    "\u{212f}-\u{2134}\u{2139}\u{213c}-\u{213f}\u{2145}-\u{2149}\u{214e}\u{2183}\u{2184}",
    "\u{2c00}-\u{2c7b}\u{2c7e}-\u{2ce4}\u{2ceb}-\u{2cee}\u{2cf2}\u{2cf3}\u{a640}-\u{a66d}",
    "\u{a680}-\u{a69b}\u{a722}-\u{a76f}\u{a771}-\u{a787}\u{a78b}-\u{a78e}\u{ab70}-\u{abbf}",
    "\u{fb00}-\u{fb06}\u{fb13}-\u{fb17}\u{ff21}-\u{ff3a}\u{ff41}-\u{ff5a}\u{10400}-\u{1044f}",
    "\u{104b0}-\u{104d3}\u{104d8}-\u{104fb}\u{10c80}-\u{10cb2}\u{10cc0}-\u{10cf2}\u{118a0}-\u{118df}",
    "\u{1e900}-\u{1e943}]+",
);

fn pre_tokenizer(pre: &str) -> Option<PreTokenizer> {
    let (regexes, ignore_merges): (&'static [&'static str], bool) = match pre {
        // DeepSeek-V3, R1 (and V3's successors): the same three splits as
        // their tokenizer.json.
        "deepseek-v3" => (
            &[
                r"\p{N}{1,3}",
                "[\u{4e00}-\u{9fa5}\u{3040}-\u{309f}\u{30a0}-\u{30ff}]+",
                r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
            ],
            false,
        ),
        // DeepSeek LLM, whose tokenizer DeepSeek-V2 reuses.
        "deepseek-llm" => (
            &[
                r"[\r\n]",
                DEEPSEEK_LLM_LETTERS,
                "\\s?[!-/:-~\u{ff01}-\u{ff0f}\u{ff1a}-\u{ff5e}\u{2018}-\u{201f}\u{3000}-\u{3002}]+",
                r"\s+$",
                CJK_HANGUL,
                r"\p{N}+",
            ],
            false,
        ),
        // DeepSeek-Coder: every digit its own piece.
        "deepseek-coder" => (
            &[r"[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"],
            false,
        ),
        // GLM-4.x (GLM-4.7-Flash is a `deepseek2` file): Llama 3's pattern.
        "glm4" => (
            &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            true,
        ),
        // Kimi-K2: llama.cpp's hand-written splitter implements the
        // tiktoken pattern of its rank file.
        "kimi-k2" => (&[KIMI_PATTERN], false),
        _ => return None,
    };
    Some(PreTokenizer {
        regexes,
        ignore_merges,
    })
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
    let pre_tokenizer = pre_tokenizer(pre).ok_or_else(|| {
        format!("`tokenizer.ggml.pre` `{pre}` is not supported (supported: {SUPPORTED_PRE})")
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
    let splits: Vec<Json> = pre_tokenizer
        .regexes
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
            "ignore_merges": pre_tokenizer.ignore_merges,
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
        // What ends generation, as a `generation_config.json` would say it:
        // eos, then the ends of a turn and of a message the file names.
        let ends: Vec<u32> = vocab
            .eos_token_id
            .into_iter()
            .chain(vocab.end_of_turn_ids.iter().copied())
            .collect();
        let generation = json!({ "eos_token_id": ends });
        Self::assemble(
            inner,
            Some((path, config)),
            Some((path, generation)),
            chat_template,
        )
    }
}
