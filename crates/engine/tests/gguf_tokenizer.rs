//! The tokenizer and chat template a GGUF file carries, rebuilt from its
//! metadata, against Hugging Face's `AutoTokenizer` on the same model: the
//! embedded model converted by llama.cpp's converter
//! (`scripts/make_gguf_fixtures.sh`), checked with the parity fixture of
//! `tests/tokenizer.rs` (`tests/fixtures/tiny_tokenizer.json`).

mod common;

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use ferroseek_engine::{ChatInput, Error, Tokenizer};
use serde_json::{Map, Value};

fn gguf_path() -> PathBuf {
    common::repo_dir().join("crates/model/tests/fixtures/gguf/tiny-deepseek-v3-q8_0.gguf")
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_u64)
        .map(|n| n as u32)
        .collect()
}

#[test]
fn gguf_tokenizer_encodes_and_decodes_like_hugging_face() -> Result<()> {
    let fixture = common::read_json("tests/fixtures/tiny_tokenizer.json")?;
    let tok = Tokenizer::from_gguf(&gguf_path(), None)?;
    assert_eq!(
        tok.vocab_size() as u64,
        fixture["vocab_size"].as_u64().unwrap_or(0)
    );
    assert_eq!(
        tok.bos_token_id().map(u64::from),
        fixture["bos_token_id"].as_u64()
    );
    assert_eq!(
        tok.eos_token_ids(),
        &[fixture["eos_token_id"].as_u64().unwrap_or(0) as u32]
    );
    for case in fixture["encodings"]
        .as_array()
        .ok_or_else(|| anyhow!("no encodings"))?
    {
        let text = case["text"].as_str().unwrap_or_default();
        let with_special = tok.encode(text, true)?;
        assert_eq!(
            with_special,
            ids(&case["ids_with_special_tokens"]),
            "{text:?}"
        );
        assert_eq!(tok.encode(text, false)?, ids(&case["ids"]), "{text:?}");
        assert_eq!(
            tok.decode(&with_special, false)?,
            case["decoded"].as_str().unwrap_or_default()
        );
        assert_eq!(
            tok.decode(&with_special, true)?,
            case["decoded_skip_special"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

#[test]
fn gguf_chat_template_renders_like_hugging_face() -> Result<()> {
    let fixture = common::read_json("tests/fixtures/tiny_tokenizer.json")?;
    let tok = Tokenizer::from_gguf(&gguf_path(), None)?;
    let chats = fixture["chats"]
        .as_array()
        .ok_or_else(|| anyhow!("no chats"))?;
    assert!(!chats.is_empty());
    for case in chats {
        let conv = &fixture["conversations"][case["conversation"].as_str().unwrap_or_default()];
        let messages = common::messages(&conv["messages"])?;
        let tools: Option<Vec<Value>> = conv.get("tools").and_then(Value::as_array).cloned();
        let kwargs: Map<String, Value> = case["kwargs"].as_object().cloned().unwrap_or_default();
        let input = ChatInput {
            messages: &messages,
            tools: tools.as_deref(),
            add_generation_prompt: case["add_generation_prompt"].as_bool().unwrap_or(false),
            kwargs: Some(&kwargs),
            template_name: None,
        };
        let what = format!("{} {}", case["conversation"], case["kwargs"]);
        assert_eq!(
            tok.apply_chat_template(&input)?,
            case["text"].as_str().unwrap_or_default(),
            "{what}"
        );
        assert_eq!(tok.encode_chat(&input)?, ids(&case["ids"]), "{what}");
    }
    Ok(())
}

#[test]
fn a_file_that_is_not_gguf_is_an_error_naming_it() {
    let path = common::repo_dir().join("models/tiny-deepseek-v3/config.json");
    match Tokenizer::from_gguf(&path, None) {
        Err(Error::InvalidFile { path: p, reason }) => {
            assert_eq!(p, path);
            assert!(reason.contains("not a readable GGUF file"), "{reason}");
        }
        other => panic!("expected InvalidFile, got {:?}", other.map(|_| ())),
    }
}
