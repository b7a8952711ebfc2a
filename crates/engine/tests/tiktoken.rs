//! A model folder with tiktoken's `tiktoken.model` instead of
//! `tokenizer.json` (Kimi-K2, Moonlight) encodes as the `tiktoken` package
//! does. `scripts/make_tiktoken_fixture.py` made the rank file, a Kimi-style
//! `tokenizer_config.json` and tiktoken's ids and decodings of a varied
//! corpus (`tests/fixtures/tiktoken/`).

mod common;

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Result};
use ferroseek_engine::{
    ChatInput, ChatMessage, Error, Role, TokenTable, Tokenizer, TokenizerFiles,
};
use serde_json::{json, Value};

fn fixture_dir() -> PathBuf {
    common::crate_dir().join("tests/fixtures/tiktoken")
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
fn tiktoken_model_encodes_and_decodes_like_tiktoken() -> Result<()> {
    let expected = common::read_json("tests/fixtures/tiktoken/expected.json")?;
    let tok = Tokenizer::from_dir(fixture_dir())?;
    let field = |name: &str| expected[name].as_u64().map(|n| n as usize);
    assert_eq!(Some(tok.vocab_size()), field("vocab_size"));
    assert_eq!(
        tok.bos_token_id().map(|id| id as usize),
        field("bos_token_id")
    );
    assert_eq!(
        tok.eos_token_ids(),
        [field("eos_token_id").unwrap_or(0) as u32]
    );
    let regenerate = "(if the loader changed on purpose, rerun scripts/make_tiktoken_fixture.py)";
    let cases = expected["cases"]
        .as_array()
        .ok_or_else(|| anyhow!("no cases"))?;
    assert!(cases.len() > 20);
    for case in cases {
        let text = case["text"].as_str().unwrap_or_default();
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text, false)?, want, "{text:?} {regenerate}");
        // Kimi's tokenizer adds no BOS, and the config does not ask for one.
        assert_eq!(tok.encode(text, true)?, want, "{text:?}");
        assert_eq!(
            tok.decode(&want, false)?,
            case["decoded"].as_str().unwrap_or_default(),
            "{text:?}"
        );
        assert_eq!(
            tok.decode(&want, true)?,
            case["decoded_skip_special"].as_str().unwrap_or_default(),
            "{text:?}"
        );
    }
    Ok(())
}

/// The ids between named special tokens are reserved tokens, as transformers
/// and Kimi's own tokenizer name them, so every id up to `[PAD]` has a token.
#[test]
fn gaps_between_special_tokens_are_reserved_tokens() -> Result<()> {
    let expected = common::read_json("tests/fixtures/tiktoken/expected.json")?;
    let ranks = expected["ranks"].as_u64().unwrap_or(0) as u32;
    let tok = Tokenizer::from_dir(fixture_dir())?;
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(ranks + 2));
    let reserved = format!("<|reserved_token_{}|>", ranks + 5);
    assert_eq!(tok.token_to_id(&reserved), Some(ranks + 5));
    assert_eq!(tok.token_to_id("[PAD]"), Some(ranks + 255));
    assert_eq!(
        tok.id_to_token(ranks + 17).as_deref(),
        Some("<|im_middle|>")
    );
    assert_eq!(tok.encode(&reserved, false)?, [ranks + 5]);
    Ok(())
}

/// A model folder made of some of the fixture's files and `extra`.
struct Folder(PathBuf);

impl Folder {
    fn new(name: &str, copy: &[&str], extra: &[(&str, String)]) -> Result<Self> {
        let dir =
            std::env::temp_dir().join(format!("ferroseek-tiktoken-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        for file in copy {
            std::fs::copy(fixture_dir().join(file), dir.join(file))?;
        }
        for (file, text) in extra {
            std::fs::write(dir.join(file), text)?;
        }
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Folder {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn tokenizer_json_wins_over_tiktoken_model() -> Result<()> {
    let tiny = common::repo_dir().join("models/tiny-deepseek-v3/tokenizer.json");
    let folder = Folder::new(
        "both",
        &["tiktoken.model"],
        &[("tokenizer.json", std::fs::read_to_string(tiny)?)],
    )?;
    let with_json = Tokenizer::from_dir(folder.path())?;
    let tiny = Tokenizer::from_dir(common::repo_dir().join("models/tiny-deepseek-v3"))?;
    assert_eq!(with_json.vocab_size(), tiny.vocab_size());
    assert_eq!(
        with_json.encode("中文English混合", false)?,
        tiny.encode("中文English混合", false)?
    );
    Ok(())
}

#[test]
fn a_folder_without_tokenizer_files_names_both() -> Result<()> {
    let folder = Folder::new("neither", &["tokenizer_config.json"], &[])?;
    let err = Tokenizer::from_dir(folder.path()).unwrap_err();
    assert!(matches!(err, Error::NoTokenizer), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("tokenizer.json") && msg.contains("tiktoken.model"),
        "{msg}"
    );
    Ok(())
}

fn load_error(name: &str, rank_file: &str, config: Value) -> Result<String> {
    let folder = Folder::new(
        name,
        &[],
        &[
            ("tiktoken.model", rank_file.to_owned()),
            ("tokenizer_config.json", config.to_string()),
        ],
    )?;
    match Tokenizer::from_dir(folder.path()) {
        Ok(_) => Err(anyhow!("{name}: loaded although invalid")),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn invalid_rank_files_and_added_tokens_say_what_is_wrong() -> Result<()> {
    // "a" 0, "b" 1, "ab" 2.
    let ranks = "YQ== 0\nYg== 1\nYWI= 2\n";
    let special = |id: u32| json!({"added_tokens_decoder": {id.to_string(): {"content": "<|x|>", "special": true}}});
    let msg = load_error("collide", ranks, special(2))?;
    assert!(msg.contains("<|x|>") && msg.contains("id 2"), "{msg}");
    let msg = load_error("gap", "YQ== 0\nYWI= 2\n", special(3))?;
    assert!(
        msg.contains("tiktoken.model") && msg.contains("rank 1"),
        "{msg}"
    );
    let msg = load_error("base64", "YQ== 0\n!!!! 1\n", special(2))?;
    assert!(msg.contains("line 2") && msg.contains("base64"), "{msg}");
    let msg = load_error(
        "key",
        ranks,
        json!({"added_tokens_decoder": {"x": {"content": "a"}}}),
    )?;
    assert!(msg.contains("`added_tokens_decoder.x`"), "{msg}");
    Ok(())
}

#[test]
fn a_small_rank_file_merges_by_rank_and_places_added_tokens() -> Result<()> {
    // "a" 0, "b" 1, "ab" 2; `<|x|>` at 5, so 3 and 4 are reserved.
    let folder = Folder::new(
        "small",
        &[],
        &[
            ("tiktoken.model", "YQ== 0\nYg== 1\nYWI= 2\n".to_owned()),
            (
                "tokenizer_config.json",
                json!({"added_tokens_decoder": {"5": {"content": "<|x|>", "special": true}}, "eos_token": "<|x|>"})
                    .to_string(),
            ),
        ],
    )?;
    let tok = Tokenizer::from_dir(folder.path())?;
    assert_eq!(tok.encode("abab<|x|>ba", false)?, [2, 2, 5, 1, 0]);
    assert_eq!(tok.eos_token_ids(), [5]);
    assert_eq!(tok.vocab_size(), 6);
    assert_eq!(tok.token_to_id("<|reserved_token_3|>"), Some(3));
    assert_eq!(tok.decode(&[2, 5, 1], true)?, "abb");
    Ok(())
}

/// A Kimi-style repository in the hub cache (offline): the rank file and
/// `chat_template.jinja` are among the files found, and the tokenizer built
/// from them encodes as tiktoken does and renders the file's template.
#[test]
fn a_hub_snapshot_with_a_rank_file_and_a_template_file_loads() -> Result<()> {
    const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";
    let cache = Folder::new("hub", &[], &[])?;
    let repo = cache.path().join("models--moonshot-test--kimi-tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot)?;
    std::fs::create_dir_all(repo.join("refs"))?;
    std::fs::write(repo.join("refs/main"), COMMIT)?;
    let tiny = common::repo_dir().join("models/tiny-deepseek-v3");
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(tiny.join(file), snapshot.join(file))?;
    }
    for file in ["tiktoken.model", "tokenizer_config.json"] {
        std::fs::copy(fixture_dir().join(file), snapshot.join(file))?;
    }
    let template =
        "{% for m in messages %}<|im_{{ m.role }}|>{{ m.content }}<|im_end|>{% endfor %}";
    std::fs::write(snapshot.join("chat_template.jinja"), template)?;

    let hub = ferroseek_model::HubOptions {
        cache_dir: cache.path().to_owned(),
        offline: true,
        revision: "main".into(),
    };
    let files = ferroseek_model::resolve_model("moonshot-test/kimi-tiny", &hub)?;
    assert_eq!(files.tiktoken, Some(snapshot.join("tiktoken.model")));
    assert_eq!(
        files.chat_template,
        Some(snapshot.join("chat_template.jinja"))
    );
    let tok = Tokenizer::from_files(&TokenizerFiles::from(&files))?;

    let expected = common::read_json("tests/fixtures/tiktoken/expected.json")?;
    let case = expected["cases"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|case| {
            case["text"]
                .as_str()
                .unwrap_or_default()
                .starts_with("中文English")
        })
        .ok_or_else(|| anyhow!("no mixed Han/Latin case"))?;
    let text = case["text"].as_str().unwrap_or_default();
    assert_eq!(tok.encode(text, false)?, ids(&case["ids"]), "{text:?}");
    let messages = [ChatMessage::new(Role::User, "中文English")];
    let prompt = tok.encode_chat(&ChatInput::new(&messages))?;
    let im_user = tok.token_to_id("<|im_user|>");
    let im_end = tok.token_to_id("<|im_end|>");
    assert_eq!(prompt.first().copied(), im_user);
    assert_eq!(prompt.last().copied(), im_end);
    assert_eq!(
        tok.decode(&prompt, false)?,
        "<|im_user|>中文English<|im_end|>"
    );
    Ok(())
}

/// Without a `chat_template` in `tokenizer_config.json` (Kimi's configs have
/// none), `chat_template.jinja` beside it is the template.
#[test]
fn chat_template_jinja_is_read_when_the_config_has_no_template() -> Result<()> {
    let folder = Folder::new(
        "template-file",
        &["tiktoken.model", "tokenizer_config.json"],
        &[(
            "chat_template.jinja",
            "{{ bos_token }}{{ messages[0].content }}".into(),
        )],
    )?;
    let tok = Tokenizer::from_dir(folder.path())?;
    let messages = [ChatMessage::new(Role::User, "hi")];
    assert_eq!(
        tok.apply_chat_template(&ChatInput::new(&messages))?,
        "[BOS]hi"
    );
    let without = Folder::new(
        "no-template",
        &["tiktoken.model", "tokenizer_config.json"],
        &[],
    )?;
    let tok = Tokenizer::from_dir(without.path())?;
    assert!(matches!(
        tok.apply_chat_template(&ChatInput::new(&messages)),
        Err(Error::NoChatTemplate(_))
    ));
    Ok(())
}

/// Logprobs and the grammar engine's token trie read each id's bytes from
/// the `TokenTable`: for a rank file they are the token's raw bytes, so the
/// ids of every text spell the text, and Kimi's tokens are special.
#[test]
fn token_table_gives_each_rank_its_bytes() -> Result<()> {
    let expected = common::read_json("tests/fixtures/tiktoken/expected.json")?;
    let tok = Tokenizer::from_dir(fixture_dir())?;
    let table = TokenTable::new(&tok, tok.vocab_size());
    for case in expected["cases"].as_array().into_iter().flatten() {
        let text = case["text"].as_str().unwrap_or_default();
        let spelled: Vec<u8> = ids(&case["ids"])
            .into_iter()
            .flat_map(|id| table.bytes(id).to_vec())
            .collect();
        assert_eq!(String::from_utf8_lossy(&spelled), text);
    }
    let im_end = tok.token_to_id("<|im_end|>").unwrap_or(0);
    assert!(table.is_special(im_end) && table.is_added(im_end));
    Ok(())
}
