//! The files of a checkpoint: `config.json`, the weights (one
//! `model.safetensors`, or the shards an index names) and the tokenizer's
//! files (`tokenizer.json` or `tiktoken.model`, the configs, the chat
//! template), found in a folder or a hub repository; or a GGUF file (and
//! its split siblings), which holds config and weights in one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::hub::{HubOptions, HubRepo};
use crate::error::{read_json, ModelError, Result};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// How a checkpoint's weights and config are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    /// `config.json` plus safetensors files.
    Safetensors,
    /// GGUF: the first file's metadata is the config.
    Gguf,
}

/// The files of one checkpoint, wherever they came from.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub format: CheckpointFormat,
    /// `config.json`; for GGUF the first file, whose metadata is the config.
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
    /// `tiktoken.model`: the rank file Kimi-K2 and Moonlight ship instead
    /// of `tokenizer.json` (looked for only when there is no `tokenizer.json`).
    pub tiktoken: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
    pub generation_config: Option<PathBuf>,
    /// `chat_template.jinja`: where newer repositories keep the chat
    /// template (it wins over `tokenizer_config.json`'s).
    pub chat_template: Option<PathBuf>,
}

#[derive(Deserialize)]
struct ShardIndex {
    weight_map: HashMap<String, String>,
}

fn read_shard_names(index: &Path) -> Result<Vec<String>> {
    let parsed: ShardIndex = read_json(index)?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}

/// A source of named files: a folder, or a hub repository.
pub(super) trait FileSource {
    fn fetch(&self, name: &str) -> Result<Option<PathBuf>>;
    fn describe(&self) -> String;
}

struct Folder(PathBuf);

impl FileSource for Folder {
    fn fetch(&self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.0.join(name);
        Ok(path.is_file().then_some(path))
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

fn collect_files(source: &dyn FileSource) -> Result<ModelFiles> {
    let missing = |name: &str| ModelError::Hub {
        model: source.describe(),
        message: format!("has no {name}"),
    };
    let config = source
        .fetch("config.json")?
        .ok_or_else(|| missing("config.json"))?;
    let weights = if let Some(index) = source.fetch(INDEX_FILE)? {
        read_shard_names(&index)?
            .iter()
            .map(|shard| source.fetch(shard)?.ok_or_else(|| missing(shard)))
            .collect::<Result<Vec<_>>>()?
    } else {
        let single = source.fetch(SINGLE_FILE)?;
        vec![single.ok_or_else(|| missing("model.safetensors or model.safetensors.index.json"))?]
    };
    let tokenizer = source.fetch("tokenizer.json")?;
    // The rank file only matters without `tokenizer.json`, which wins over it.
    let tiktoken = match tokenizer {
        Some(_) => None,
        None => source.fetch("tiktoken.model")?,
    };
    Ok(ModelFiles {
        format: CheckpointFormat::Safetensors,
        config,
        weights,
        tokenizer,
        tiktoken,
        tokenizer_config: source.fetch("tokenizer_config.json")?,
        generation_config: source.fetch("generation_config.json")?,
        chat_template: source.fetch("chat_template.jinja")?,
    })
}

/// A GGUF file: the file itself, or, for the first of a split set
/// (`…-00001-of-00003.gguf`), all of its files. The tokenizer comes from
/// elsewhere.
fn gguf_files(path: &Path) -> Result<ModelFiles> {
    Ok(ModelFiles {
        format: CheckpointFormat::Gguf,
        config: path.to_path_buf(),
        weights: super::gguf::split_files(path)?,
        tokenizer: None,
        tiktoken: None,
        tokenizer_config: None,
        generation_config: None,
        chat_template: None,
    })
}

/// Resolves `model` — a folder, a `.gguf` file, or a hub id such as
/// `deepseek-ai/DeepSeek-V2-Lite-Chat` — to its files, downloading into the
/// hub cache when allowed.
pub fn resolve_model(model: &str, hub: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return collect_files(&Folder(path.to_path_buf()));
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
    {
        if !path.is_file() {
            return Err(ModelError::Hub {
                model: model.to_string(),
                message: "is not a readable GGUF file".into(),
            });
        }
        return gguf_files(path);
    }
    let looks_like_id = model.split('/').count() == 2
        && !model.starts_with('.')
        && model.split('/').all(|part| !part.is_empty());
    if !looks_like_id {
        return Err(ModelError::Hub {
            model: model.to_string(),
            message: "is neither a folder nor a hub id of the form `org/name`".into(),
        });
    }
    collect_files(&HubRepo::new(model, hub)?)
}
