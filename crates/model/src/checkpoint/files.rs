//! The files of a checkpoint: `config.json`, the weights (one
//! `model.safetensors`, or the shards an index names) and the tokenizer's
//! files (`tokenizer.json` or `tiktoken.model`, the configs, the chat
//! template), found in a folder or a hub repository; or a GGUF file (and
//! its split siblings), which holds config and weights in one, given as a
//! path or found in a folder or hub repository (`--gguf-file` names it
//! where there are several).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::gguf::split_name;
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
    /// The names of every file it holds, `/` between folders.
    fn list(&self) -> Result<Vec<String>>;
    fn describe(&self) -> String;
}

struct Folder(PathBuf);

impl FileSource for Folder {
    fn fetch(&self, name: &str) -> Result<Option<PathBuf>> {
        let path = self.0.join(name);
        Ok(path.is_file().then_some(path))
    }
    fn list(&self) -> Result<Vec<String>> {
        list_files(&self.0)
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// The files under `root` (hidden ones left out), by their names relative to
/// it; a hub snapshot's files are links, which count as the files they name.
pub(super) fn list_files(root: &Path) -> Result<Vec<String>> {
    let mut found = Vec::new();
    let mut folders = vec![(root.to_path_buf(), String::new())];
    while let Some((folder, prefix)) = folders.pop() {
        let entries = std::fs::read_dir(&folder).map_err(|source| ModelError::Io {
            path: folder.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let path = entry.path();
            if path.is_dir() {
                folders.push((path, format!("{prefix}{name}/")));
            } else if path.is_file() {
                found.push(format!("{prefix}{name}"));
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_gguf(name: &str) -> bool {
    Path::new(name)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The GGUF files of `listing` one could serve: unsplit files, and the first
/// file of each split set.
fn gguf_choices(listing: &[String]) -> Vec<String> {
    listing
        .iter()
        .filter(|name| is_gguf(name))
        .filter(|name| {
            let base = name.rsplit('/').next().unwrap_or(name.as_str());
            split_name(base).is_none_or(|(_, index, _)| index == 1)
        })
        .cloned()
        .collect()
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

/// A GGUF checkpoint's files: `weights` the file itself, or, for the
/// first of a split set (`…-00001-of-00003.gguf`), all of its files. The
/// tokenizer comes from the first file's metadata.
fn gguf_model_files(weights: Vec<PathBuf>) -> ModelFiles {
    ModelFiles {
        format: CheckpointFormat::Gguf,
        config: weights[0].clone(),
        weights,
        tokenizer: None,
        tiktoken: None,
        tokenizer_config: None,
        generation_config: None,
        chat_template: None,
    }
}

/// The GGUF file `name` of `source`, with the rest of its split set.
fn gguf_from_source(source: &dyn FileSource, name: &str) -> Result<ModelFiles> {
    let error = |message: String| ModelError::Hub {
        model: source.describe(),
        message,
    };
    let (folder, base) = match name.rsplit_once('/') {
        Some((folder, base)) => (format!("{folder}/"), base),
        None => (String::new(), name),
    };
    let names = match split_name(base) {
        None => vec![name.to_string()],
        Some((_, index, count)) if index != 1 => {
            return Err(error(format!(
                "`--gguf-file` {name} is file {index} of a split set of {count}: name the first, -00001-of-{count:05}.gguf"
            )))
        }
        Some((prefix, _, count)) => (1..=count)
            .map(|i| format!("{folder}{prefix}-{i:05}-of-{count:05}.gguf"))
            .collect(),
    };
    let mut weights = Vec::with_capacity(names.len());
    for part in &names {
        match source.fetch(part)? {
            Some(path) => weights.push(path),
            None => {
                let choices = gguf_choices(&source.list()?);
                let have = if choices.is_empty() {
                    "no GGUF file".to_string()
                } else {
                    format!("GGUF files {}", choices.join(", "))
                };
                return Err(error(format!("has no {part} (it has {have})")));
            }
        }
    }
    Ok(gguf_model_files(weights))
}

/// A folder's or repository's checkpoint: the GGUF file `gguf_file` names;
/// else the safetensors checkpoint; else its one GGUF file (or split set).
fn from_source(source: &dyn FileSource, gguf_file: Option<&str>) -> Result<ModelFiles> {
    if let Some(name) = gguf_file {
        if !is_gguf(name) {
            return Err(ModelError::Hub {
                model: source.describe(),
                message: format!("`--gguf-file` {name} does not name a .gguf file"),
            });
        }
        return gguf_from_source(source, name);
    }
    let listing = source.list()?;
    if listing.iter().any(|f| f == SINGLE_FILE || f == INDEX_FILE) {
        return collect_files(source);
    }
    match gguf_choices(&listing).as_slice() {
        [one] => gguf_from_source(source, one),
        [] => collect_files(source),
        several => Err(ModelError::Hub {
            model: source.describe(),
            message: format!(
                "holds several GGUF files and no safetensors; choose one with `--gguf-file`: {}",
                several.join(", ")
            ),
        }),
    }
}

/// Resolves `model` — a folder, a `.gguf` file, or a hub id such as
/// `deepseek-ai/DeepSeek-V2-Lite-Chat` — to its files, downloading into the
/// hub cache when allowed.
pub fn resolve_model(model: &str, hub: &HubOptions) -> Result<ModelFiles> {
    resolve_model_with_gguf_file(model, None, hub)
}

/// [`resolve_model`], with `gguf_file` (`--gguf-file`) naming the GGUF file
/// to serve from a folder or hub repository (of a split set, the first:
/// the rest come with it).
pub fn resolve_model_with_gguf_file(
    model: &str,
    gguf_file: Option<&str>,
    hub: &HubOptions,
) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return from_source(&Folder(path.to_path_buf()), gguf_file);
    }
    if is_gguf(model) {
        if let Some(name) = gguf_file {
            return Err(ModelError::Hub {
                model: model.to_string(),
                message: format!(
                    "is a GGUF file already; `--gguf-file` {name} names a file in a folder or hub repository"
                ),
            });
        }
        if !path.is_file() {
            return Err(ModelError::Hub {
                model: model.to_string(),
                message: "is not a readable GGUF file".into(),
            });
        }
        return Ok(gguf_model_files(super::gguf::split_files(path)?));
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
    from_source(&HubRepo::new(model, hub)?, gguf_file)
}
