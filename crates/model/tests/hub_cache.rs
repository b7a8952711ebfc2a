//! Hub ids resolve through a local folder laid out as the Hugging Face hub cache
//! (`models--ORG--NAME/{refs,snapshots}`), offline, since no machine here
//! reaches the hub.

mod common;

use std::path::PathBuf;

use common::*;
use ferroseek_model::{resolve_model, DeepSeekModel, HubOptions, LoadOptions};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A hub cache holding fixture `v2_plain` as `test-org/tiny` at `COMMIT`, with
/// `main` pointing at it.
fn fake_cache(tag: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("ferroseek-hub-{tag}-{}", std::process::id()));
    let repo = root.join("models--test-org--tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir("v2_plain").join(file), snapshot.join(file)).unwrap();
    }
    root
}

fn offline(cache_dir: PathBuf, revision: &str) -> HubOptions {
    HubOptions {
        cache_dir,
        offline: true,
        revision: revision.into(),
    }
}

#[test]
fn hub_id_loads_from_the_cache_by_branch_and_by_commit() {
    let cache = fake_cache("ok");
    for revision in ["main", COMMIT] {
        let files = resolve_model("test-org/tiny", &offline(cache.clone(), revision)).unwrap();
        assert!(files.config.starts_with(&cache));
        assert!(files.chat_template.is_none());
        let model = DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();
        assert_eq!(model.config().model_type, "deepseek_v2");
    }
    std::fs::remove_dir_all(cache).unwrap();
}

/// A `chat_template.jinja` in the snapshot (newer repositories keep the
/// template there) is one of the model's files.
#[test]
fn a_chat_template_file_in_the_snapshot_is_found() {
    let cache = fake_cache("template");
    let snapshot = cache.join("models--test-org--tiny/snapshots").join(COMMIT);
    std::fs::write(snapshot.join("chat_template.jinja"), "{{ messages }}").unwrap();
    let files = resolve_model("test-org/tiny", &offline(cache.clone(), "main")).unwrap();
    assert_eq!(
        files.chat_template,
        Some(snapshot.join("chat_template.jinja"))
    );
    std::fs::remove_dir_all(cache).unwrap();
}

/// Kimi-K2 and Moonlight ship `tiktoken.model` instead of `tokenizer.json`;
/// the rank file is looked for only when there is no `tokenizer.json`.
#[test]
fn a_tiktoken_model_in_the_snapshot_is_found_without_tokenizer_json() {
    let cache = fake_cache("tiktoken");
    let snapshot = cache.join("models--test-org--tiny/snapshots").join(COMMIT);
    std::fs::write(snapshot.join("tiktoken.model"), "YQ== 0\n").unwrap();
    let files = resolve_model("test-org/tiny", &offline(cache.clone(), "main")).unwrap();
    assert_eq!(files.tiktoken, Some(snapshot.join("tiktoken.model")));
    assert_eq!(files.tokenizer, None);
    std::fs::write(snapshot.join("tokenizer.json"), "{}").unwrap();
    let files = resolve_model("test-org/tiny", &offline(cache.clone(), "main")).unwrap();
    assert_eq!(files.tokenizer, Some(snapshot.join("tokenizer.json")));
    assert_eq!(files.tiktoken, None);
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn offline_miss_names_the_model_and_the_file() {
    let cache = fake_cache("miss");
    let err = resolve_model("test-org/absent", &offline(cache.clone(), "main")).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("test-org/absent") && msg.contains("config.json"),
        "{msg}"
    );
    let err = resolve_model("not a model", &offline(cache.clone(), "main")).unwrap_err();
    assert!(
        err.to_string().contains("neither a folder nor a hub id"),
        "{err}"
    );
    std::fs::remove_dir_all(cache).unwrap();
}
