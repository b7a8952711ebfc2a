//! The tokenizer loads a model folder as transformers does. Parity numbers
//! come from `scripts/make_template_fixtures.py`, which ran HF's
//! `AutoTokenizer` on the embedded default model (models/tiny-deepseek-v3)
//! and wrote `tests/fixtures/tiny_tokenizer.json`; the config-shape tests
//! build small model folders of their own.

mod common;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use ferroseek_engine::{ChatInput, ChatMessage, Error, Role, Tokenizer};
use serde_json::{json, Map, Value};

fn tiny_dir() -> PathBuf {
    common::repo_dir().join("models/tiny-deepseek-v3")
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
fn tiny_model_encodes_and_decodes_like_hugging_face() -> Result<()> {
    let fixture = common::read_json("tests/fixtures/tiny_tokenizer.json")?;
    let tok = Tokenizer::from_dir(tiny_dir())?;
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
    let regenerate = "(if the tokenizer changed, rerun scripts/make_template_fixtures.py)";
    for case in fixture["encodings"]
        .as_array()
        .ok_or_else(|| anyhow!("no encodings"))?
    {
        let text = case["text"].as_str().unwrap_or_default();
        let with_special = tok.encode(text, true)?;
        assert_eq!(
            with_special,
            ids(&case["ids_with_special_tokens"]),
            "{text:?} {regenerate}"
        );
        assert_eq!(
            tok.encode(text, false)?,
            ids(&case["ids"]),
            "{text:?} {regenerate}"
        );
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
fn tiny_model_chat_prompt_matches_hugging_face_ids() -> Result<()> {
    let fixture = common::read_json("tests/fixtures/tiny_tokenizer.json")?;
    let tok = Tokenizer::from_dir(tiny_dir())?;
    for case in fixture["chats"]
        .as_array()
        .ok_or_else(|| anyhow!("no chats"))?
    {
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

/// A throwaway model folder holding the tiny model's tokenizer.json and the given configs.
struct ModelDir(PathBuf);

impl ModelDir {
    fn new(name: &str, files: &[(&str, String)]) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("ferroseek-engine-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(
            tiny_dir().join("tokenizer.json"),
            dir.join("tokenizer.json"),
        )?;
        for (file, text) in files {
            std::fs::write(dir.join(file), text)?;
        }
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ModelDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

const BOS: &str = "<｜begin▁of▁sentence｜>";
const EOS: &str = "<｜end▁of▁sentence｜>";

#[test]
fn special_tokens_as_strings_and_eos_list_from_generation_config() -> Result<()> {
    let dir = ModelDir::new(
        "strings",
        &[
            (
                "tokenizer_config.json",
                json!({"bos_token": BOS, "eos_token": EOS, "add_bos_token": true,
                       "chat_template": "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"})
                .to_string(),
            ),
            ("generation_config.json", json!({"eos_token_id": [3988, 1, 3988]}).to_string()),
        ],
    )?;
    let tok = Tokenizer::from_dir(dir.path())?;
    assert_eq!(
        tok.eos_token_ids(),
        &[3988, 1],
        "generation_config first, then eos_token, no repeats"
    );
    assert!(tok.is_eos(1) && tok.is_eos(3988) && !tok.is_eos(0));
    assert_eq!(tok.special_tokens().bos_token.as_deref(), Some(BOS));
    let messages = [ChatMessage::new(Role::User, "hi")];
    assert_eq!(
        tok.apply_chat_template(&ChatInput::new(&messages))?,
        format!("{BOS}hi{EOS}")
    );
    let ids = tok.encode_chat(&ChatInput::new(&messages))?;
    assert_eq!(
        (ids.first(), ids.last()),
        (Some(&0), Some(&1)),
        "one BOS from the template, none added"
    );
    assert_eq!(tok.token_to_id(EOS), Some(1));
    assert_eq!(tok.id_to_token(0).as_deref(), Some(BOS));
    Ok(())
}

#[test]
fn named_chat_templates_pick_tool_use_when_tools_are_given() -> Result<()> {
    let config = json!({
        "bos_token": {"content": BOS, "lstrip": false},
        "eos_token": {"content": EOS},
        "chat_template": [
            {"name": "default", "template": "default:{{ messages | length }}"},
            {"name": "tool_use", "template": "tools:{{ tools | length }}"},
            {"name": "rag", "template": "rag"}
        ]
    });
    let dir = ModelDir::new("named", &[("tokenizer_config.json", config.to_string())])?;
    let tok = Tokenizer::from_dir(dir.path())?;
    let template = tok.chat_template().ok_or_else(|| anyhow!("no template"))?;
    assert_eq!(template.names(), ["default", "tool_use", "rag"]);
    let messages = [ChatMessage::new(Role::User, "hi")];
    let tools = [json!({"type": "function", "function": {"name": "f"}})];
    let mut input = ChatInput::new(&messages);
    assert_eq!(tok.apply_chat_template(&input)?, "default:1");
    input.tools = Some(&tools);
    assert_eq!(tok.apply_chat_template(&input)?, "tools:1");
    input.template_name = Some("rag");
    assert_eq!(tok.apply_chat_template(&input)?, "rag");
    input.template_name = Some("nope");
    assert!(matches!(
        tok.apply_chat_template(&input),
        Err(Error::NoChatTemplate(_))
    ));
    Ok(())
}

#[test]
fn chat_template_jinja_file_wins_over_the_config() -> Result<()> {
    let dir = ModelDir::new(
        "jinja-file",
        &[
            (
                "tokenizer_config.json",
                json!({"chat_template": "from config"}).to_string(),
            ),
            ("chat_template.jinja", "from file\n".to_owned()),
        ],
    )?;
    let tok = Tokenizer::from_dir(dir.path())?;
    let messages = [ChatMessage::new(Role::User, "hi")];
    assert_eq!(
        tok.apply_chat_template(&ChatInput::new(&messages))?,
        "from file"
    );
    Ok(())
}

fn load_error(name: &str, files: &[(&str, String)]) -> Result<String> {
    let dir = ModelDir::new(name, files)?;
    match Tokenizer::from_dir(dir.path()) {
        Ok(_) => Err(anyhow!("{name}: loaded although invalid")),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn invalid_configs_say_which_file_and_field() -> Result<()> {
    let msg = load_error("bad-json", &[("tokenizer_config.json", "{not json".into())])?;
    assert!(
        msg.contains("tokenizer_config.json") && msg.contains("not valid JSON"),
        "{msg}"
    );
    let msg = load_error(
        "bad-eos",
        &[(
            "generation_config.json",
            json!({"eos_token_id": "x"}).to_string(),
        )],
    )?;
    assert!(
        msg.contains("generation_config.json") && msg.contains("eos_token_id"),
        "{msg}"
    );
    let msg = load_error(
        "bad-bos",
        &[("tokenizer_config.json", json!({"bos_token": 5}).to_string())],
    )?;
    assert!(msg.contains("`bos_token`"), "{msg}");
    let msg = load_error(
        "unknown-eos",
        &[(
            "tokenizer_config.json",
            json!({"eos_token": "<nope>"}).to_string(),
        )],
    )?;
    assert!(msg.contains("not in the tokenizer's vocabulary"), "{msg}");
    let msg = load_error(
        "bad-template-list",
        &[(
            "tokenizer_config.json",
            json!({"chat_template": [{"name": "default"}]}).to_string(),
        )],
    )?;
    assert!(msg.contains("chat_template[0]"), "{msg}");
    let msg = load_error(
        "bad-template-syntax",
        &[(
            "tokenizer_config.json",
            json!({"chat_template": "{% for %}"}).to_string(),
        )],
    )?;
    assert!(msg.contains("does not compile"), "{msg}");
    let missing = std::env::temp_dir().join("ferroseek-engine-no-such-model");
    let msg = Tokenizer::from_dir(&missing)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("tiktoken.model"),
        "{msg}"
    );
    Ok(())
}

#[test]
fn tokenizer_without_config_has_no_chat_template() -> Result<()> {
    let dir = ModelDir::new("bare", &[])?;
    let tok = Tokenizer::from_dir(dir.path())?;
    assert!(tok.eos_token_ids().is_empty());
    let messages = [ChatMessage::new(Role::User, "hi")];
    assert!(matches!(
        tok.apply_chat_template(&ChatInput::new(&messages)),
        Err(Error::NoChatTemplate(_))
    ));
    let mut want = vec![0];
    want.extend(tok.encode("hello", false)?);
    assert_eq!(
        tok.encode("hello", true)?,
        want,
        "tokenizer.json's post-processor adds BOS"
    );
    Ok(())
}
