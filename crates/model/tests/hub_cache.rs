//! Hub ids resolve through a local folder laid out as the Hugging Face hub cache
//! (`models--ORG--NAME/{refs,snapshots}`), offline, since no machine here
//! reaches the hub.

mod common;

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::QTensor;
use candle_core::Device;
use common::*;
use ferroseek_model::{
    resolve_model, resolve_model_with_gguf_file, CheckpointFormat, DeepSeekModel, HubOptions,
    LoadOptions,
};

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

fn gguf_fixture(name: &str) -> PathBuf {
    fixture_dir("gguf").join(name)
}

/// A hub cache holding `test-org/tiny-gguf` at `COMMIT` (`main` pointing at
/// it), whose snapshot holds `files` (name in the snapshot, file to link).
fn fake_gguf_cache(tag: &str, files: &[(&str, PathBuf)]) -> PathBuf {
    let root = std::env::temp_dir().join(format!("ferroseek-hub-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let repo = root.join("models--test-org--tiny-gguf");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    for (name, target) in files {
        let path = repo.join("snapshots").join(COMMIT).join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // The hub cache's snapshots are links into `blobs/`.
        std::os::unix::fs::symlink(target, path).unwrap();
    }
    root
}

fn snapshot(cache: &Path) -> PathBuf {
    cache
        .join("models--test-org--tiny-gguf/snapshots")
        .join(COMMIT)
}

/// `gguf` as a split set of two in `folder` (`{stem}-0000N-of-00002.gguf`),
/// laid out as llama.cpp's `gguf-split` writes one: each file a GGUF with
/// the split keys, the model's metadata in the first.
fn split_in_two(gguf: &Path, folder: &Path, stem: &str) -> Vec<PathBuf> {
    std::fs::create_dir_all(folder).unwrap();
    let mut reader = std::fs::File::open(gguf).unwrap();
    let content = Content::read(&mut reader).unwrap();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let tensors: Vec<(&str, QTensor)> = names
        .iter()
        .map(|n| {
            (
                n.as_str(),
                content.tensor(&mut reader, n, &Device::Cpu).unwrap(),
            )
        })
        .collect();
    let (count, total) = (Value::U16(2), Value::I32(tensors.len() as i32));
    let halves = [&tensors[..tensors.len() / 2], &tensors[tensors.len() / 2..]];
    let mut paths = Vec::new();
    for (no, half) in halves.iter().enumerate() {
        let no_value = Value::U16(no as u16);
        let mut metadata = vec![
            ("split.no", &no_value),
            ("split.count", &count),
            ("split.tensors.count", &total),
        ];
        if no == 0 {
            metadata.extend(content.metadata.iter().map(|(k, v)| (k.as_str(), v)));
        }
        let refs: Vec<(&str, &QTensor)> = half.iter().map(|(n, t)| (*n, t)).collect();
        let path = folder.join(format!("{stem}-{:05}-of-00002.gguf", no + 1));
        gguf_file::write(&mut std::fs::File::create(&path).unwrap(), &metadata, &refs).unwrap();
        paths.push(path);
    }
    paths
}

fn loaded_config(files: &ferroseek_model::ModelFiles) -> ferroseek_model::DeepSeekConfig {
    DeepSeekModel::load(files, &LoadOptions::default())
        .unwrap()
        .config()
        .clone()
}

/// `--model org/repo --gguf-file NAME` takes NAME from the repository's
/// snapshot, by branch and by commit, and loads it.
#[test]
fn gguf_file_in_a_hub_repo_resolves_and_loads() {
    let cache = fake_gguf_cache(
        "gguf-ok",
        &[
            ("v2_plain-f32.gguf", gguf_fixture("v2_plain-f32.gguf")),
            ("v2_group-f32.gguf", gguf_fixture("v2_group-f32.gguf")),
        ],
    );
    let direct = resolve_model(
        gguf_fixture("v2_group-f32.gguf").to_str().unwrap(),
        &offline(cache.clone(), "main"),
    )
    .unwrap();
    for revision in ["main", COMMIT] {
        let hub = offline(cache.clone(), revision);
        let files =
            resolve_model_with_gguf_file("test-org/tiny-gguf", Some("v2_group-f32.gguf"), &hub)
                .unwrap();
        assert_eq!(files.format, CheckpointFormat::Gguf);
        assert_eq!(files.weights, [snapshot(&cache).join("v2_group-f32.gguf")]);
        assert_eq!(files.config, files.weights[0]);
        assert_eq!(loaded_config(&files), loaded_config(&direct));
    }
    std::fs::remove_dir_all(cache).unwrap();
}

/// A split set named by its first file brings every part, from the
/// snapshot's subfolder; a later part, or a set with a part missing, is an
/// error that names the file and the repository.
#[test]
fn a_split_gguf_set_in_a_hub_repo_brings_all_its_parts() {
    let parts_dir = std::env::temp_dir().join(format!("ferroseek-split-{}", std::process::id()));
    let parts = split_in_two(&gguf_fixture("v2_plain-f32.gguf"), &parts_dir, "tiny");
    let cache = fake_gguf_cache(
        "gguf-split",
        &[
            ("F32/tiny-00001-of-00002.gguf", parts[0].clone()),
            ("F32/tiny-00002-of-00002.gguf", parts[1].clone()),
        ],
    );
    let hub = offline(cache.clone(), "main");
    let first = "F32/tiny-00001-of-00002.gguf";
    let files = resolve_model_with_gguf_file("test-org/tiny-gguf", Some(first), &hub).unwrap();
    let folder = snapshot(&cache).join("F32");
    assert_eq!(
        files.weights,
        [
            folder.join("tiny-00001-of-00002.gguf"),
            folder.join("tiny-00002-of-00002.gguf")
        ]
    );
    let unsplit = resolve_model(gguf_fixture("v2_plain-f32.gguf").to_str().unwrap(), &hub).unwrap();
    assert_eq!(loaded_config(&files), loaded_config(&unsplit));

    let second = "F32/tiny-00002-of-00002.gguf";
    let err = resolve_model_with_gguf_file("test-org/tiny-gguf", Some(second), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(second)
            && err.contains("test-org/tiny-gguf")
            && err.contains("-00001-of-00002"),
        "{err}"
    );

    std::fs::remove_file(folder.join("tiny-00002-of-00002.gguf")).unwrap();
    let err = resolve_model_with_gguf_file("test-org/tiny-gguf", Some(first), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no F32/tiny-00002-of-00002.gguf") && err.contains("test-org/tiny-gguf"),
        "{err}"
    );
    std::fs::remove_dir_all(cache).unwrap();
    std::fs::remove_dir_all(parts_dir).unwrap();
}

/// A `--gguf-file` the snapshot lacks is an error naming it, the repository
/// and the GGUF files it does have.
#[test]
fn a_gguf_file_absent_from_the_snapshot_is_an_error_naming_it_and_the_repo() {
    let cache = fake_gguf_cache(
        "gguf-absent",
        &[("v2_plain-f32.gguf", gguf_fixture("v2_plain-f32.gguf"))],
    );
    let hub = offline(cache.clone(), "main");
    let err = resolve_model_with_gguf_file("test-org/tiny-gguf", Some("model-Q8_0.gguf"), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("has no model-Q8_0.gguf")
            && err.contains("test-org/tiny-gguf")
            && err.contains("v2_plain-f32.gguf"),
        "{err}"
    );
    std::fs::remove_dir_all(cache).unwrap();
}

/// Without `--gguf-file`, a repository of several GGUF files (a split set
/// counting once, by its first file) is an error that lists them; one of
/// just one GGUF file is served.
#[test]
fn several_gguf_files_need_gguf_file_and_the_error_lists_them() {
    let parts_dir =
        std::env::temp_dir().join(format!("ferroseek-split-list-{}", std::process::id()));
    let parts = split_in_two(&gguf_fixture("v2_plain-f32.gguf"), &parts_dir, "tiny");
    let cache = fake_gguf_cache(
        "gguf-several",
        &[
            ("v2_group-f32.gguf", gguf_fixture("v2_group-f32.gguf")),
            ("Q/tiny-00001-of-00002.gguf", parts[0].clone()),
            ("Q/tiny-00002-of-00002.gguf", parts[1].clone()),
        ],
    );
    let hub = offline(cache.clone(), "main");
    let err = resolve_model("test-org/tiny-gguf", &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test-org/tiny-gguf")
            && err.contains("--gguf-file")
            && err.contains("Q/tiny-00001-of-00002.gguf, v2_group-f32.gguf")
            && !err.contains("00002-of-00002"),
        "{err}"
    );

    std::fs::remove_file(snapshot(&cache).join("v2_group-f32.gguf")).unwrap();
    let files = resolve_model("test-org/tiny-gguf", &hub).unwrap();
    assert_eq!(files.format, CheckpointFormat::Gguf);
    assert_eq!(files.weights.len(), 2);
    std::fs::remove_dir_all(cache).unwrap();
    std::fs::remove_dir_all(parts_dir).unwrap();
}

/// A local folder of one GGUF file and no safetensors is served; of several,
/// `--gguf-file` picks one; beside safetensors, the safetensors win.
#[test]
fn a_local_folder_serves_its_gguf_file() {
    let dir = std::env::temp_dir().join(format!("ferroseek-gguf-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let hub = offline(dir.clone(), "main");
    let folder = dir.to_str().unwrap();
    std::os::unix::fs::symlink(gguf_fixture("v2_plain-f32.gguf"), dir.join("a.gguf")).unwrap();
    let files = resolve_model(folder, &hub).unwrap();
    assert_eq!(files.weights, [dir.join("a.gguf")]);
    DeepSeekModel::load(&files, &LoadOptions::default()).unwrap();

    std::os::unix::fs::symlink(gguf_fixture("v2_group-f32.gguf"), dir.join("b.gguf")).unwrap();
    let err = resolve_model(folder, &hub).unwrap_err().to_string();
    assert!(
        err.contains("a.gguf, b.gguf") && err.contains(folder),
        "{err}"
    );
    let files = resolve_model_with_gguf_file(folder, Some("b.gguf"), &hub).unwrap();
    assert_eq!(files.weights, [dir.join("b.gguf")]);

    for file in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture_dir("v2_plain").join(file), dir.join(file)).unwrap();
    }
    let files = resolve_model(folder, &hub).unwrap();
    assert_eq!(files.format, CheckpointFormat::Safetensors);
    std::fs::remove_dir_all(dir).unwrap();
}

/// `--gguf-file` with a GGUF path, or naming something that is not a GGUF
/// file, is an error that says why.
#[test]
fn gguf_file_where_it_makes_no_sense_is_an_error() {
    let hub = offline(std::env::temp_dir(), "main");
    let path = gguf_fixture("v2_plain-f32.gguf");
    let path = path.to_str().unwrap();
    let err = resolve_model_with_gguf_file(path, Some("other.gguf"), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(path) && err.contains("is a GGUF file already") && err.contains("other.gguf"),
        "{err}"
    );
    let folder = fixture_dir("v2_plain");
    let err = resolve_model_with_gguf_file(folder.to_str().unwrap(), Some("config.json"), &hub)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("`--gguf-file` config.json does not name a .gguf file"),
        "{err}"
    );
}
