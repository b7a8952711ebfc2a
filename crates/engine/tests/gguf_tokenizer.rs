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

/// The files of `scripts/make_gguf_pretok_fixtures.py`: one small vocabulary
/// per pre-tokenizer, with a reference's encodings.
fn pretok_fixture(name: &str) -> PathBuf {
    common::repo_dir()
        .join("crates/engine/tests/fixtures/gguf_pretok")
        .join(name)
}

/// `deepseek-llm`, `deepseek-coder`, `glm4` (which skips the merges of a
/// pre-token that is a token) and `kimi-k2` encode code, CJK, long numbers,
/// emoji, whitespace runs, contractions and special tokens as a `tokenizers`
/// reference built from llama.cpp's regexes and flags does.
#[test]
fn each_gguf_pre_tokenizer_encodes_like_its_reference() -> Result<()> {
    let expected = common::read_json("tests/fixtures/gguf_pretok/expected.json")?;
    let pres = expected
        .as_object()
        .ok_or_else(|| anyhow!("expected.json is not an object"))?;
    let mut names: Vec<&str> = pres.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["deepseek-coder", "deepseek-llm", "glm4", "kimi-k2"]);
    for (pre, want) in pres {
        let tok = Tokenizer::from_gguf(&pretok_fixture(&format!("{pre}.gguf")), None)?;
        assert_eq!(
            tok.bos_token_id().map(u64::from),
            want["bos_token_id"].as_u64()
        );
        assert_eq!(
            tok.eos_token_ids(),
            &[want["eos_token_id"].as_u64().unwrap_or(u64::MAX) as u32]
        );
        let cases = want["cases"]
            .as_array()
            .ok_or_else(|| anyhow!("{pre}: no cases"))?;
        assert!(cases.len() > 20, "{pre}");
        for case in cases {
            let text = case["text"].as_str().unwrap_or_default();
            let plain = tok.encode(text, false)?;
            assert_eq!(plain, ids(&case["ids"]), "{pre} {text:?}");
            assert_eq!(
                tok.encode(text, true)?,
                ids(&case["ids_with_special_tokens"]),
                "{pre} {text:?}"
            );
            assert_eq!(
                tok.decode(&plain, false)?,
                case["decoded"].as_str().unwrap_or_default(),
                "{pre} {text:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_unknown_pre_tokenizer_is_an_error_naming_it_and_the_supported_ones() {
    let path = pretok_fixture("unknown-pre.gguf");
    match Tokenizer::from_gguf(&path, None) {
        Err(Error::InvalidFile { path: p, reason }) => {
            assert_eq!(p, path);
            for name in [
                "`gpt-4o`",
                "deepseek-v3",
                "deepseek-llm",
                "deepseek-coder",
                "glm4",
                "kimi-k2",
            ] {
                assert!(reason.contains(name), "{name}: {reason}");
            }
        }
        other => panic!("expected InvalidFile, got {:?}", other.map(|_| ())),
    }
}

/// A file that names an end of turn and of a message (GLM's name
/// `<|user|>` and `<|observation|>`) ends generation at them as at eos, as
/// llama.cpp does.
#[test]
fn the_ends_of_a_turn_and_a_message_end_generation() -> Result<()> {
    use candle_core::quantized::gguf_file::{self, Value as Meta};
    let plain = Tokenizer::from_gguf(&gguf_path(), None)?;
    let eos = plain.eos_token_ids()[0];
    let id = |token: &str| {
        plain
            .inner()
            .token_to_id(token)
            .ok_or_else(|| anyhow!("{token} is not in the vocabulary"))
    };
    let (user, assistant) = (id("<｜User｜>")?, id("<｜Assistant｜>")?);
    let mut file = std::fs::File::open(gguf_path())?;
    let content = gguf_file::Content::read(&mut file)?;
    let mut metadata: Vec<(String, Meta)> = content.metadata.into_iter().collect();
    metadata.push(("tokenizer.ggml.eot_token_id".into(), Meta::U32(user)));
    metadata.push(("tokenizer.ggml.eom_token_id".into(), Meta::U32(assistant)));
    let dir = std::env::temp_dir().join(format!("ferroseek-eot-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("eot.gguf");
    let metadata: Vec<(&str, &Meta)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut std::fs::File::create(&path)?, &metadata, &[])?;
    let tok = Tokenizer::from_gguf(&path, None);
    std::fs::remove_dir_all(&dir)?;
    assert_eq!(tok?.eos_token_ids(), &[eos, user, assistant]);
    Ok(())
}
