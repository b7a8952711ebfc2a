//! Finding a checkpoint (a local folder or a Hugging Face hub id, through the
//! standard hub cache) and reading its safetensors, memory-mapped, single-file or
//! sharded, with FP8 block-scaled weights dequantized at load.
//!
//! Tensors are read on demand by name through a candle `VarBuilder` backend, so
//! weights the forward pass never asks for (V3's multi-token-prediction layer) are
//! never touched.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use hf_hub::{Repo, RepoType};
use serde::Deserialize;

use crate::config::Fp8BlockQuant;
use crate::error::{read_json, ModelError, Result};

const INDEX_FILE: &str = "model.safetensors.index.json";
const SINGLE_FILE: &str = "model.safetensors";

/// Where the hub cache lives and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The `hub` folder of the cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// `HF_HUB_OFFLINE`: use only what the cache holds.
    pub offline: bool,
    /// Branch, tag or commit; `main` by default.
    pub revision: String,
}

impl HubOptions {
    /// Reads `HF_HUB_CACHE`, `HF_HOME` and `HF_HUB_OFFLINE` the way `huggingface_hub` does.
    pub fn from_env(revision: Option<String>) -> Self {
        let cache_dir = if let Some(dir) = std::env::var_os("HF_HUB_CACHE") {
            PathBuf::from(dir)
        } else {
            hf_hub::Cache::from_env().path().clone()
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        HubOptions {
            cache_dir,
            offline,
            revision: revision.unwrap_or_else(|| "main".into()),
        }
    }
}

/// The files of one checkpoint, wherever they came from.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub config: PathBuf,
    pub weights: Vec<PathBuf>,
    pub tokenizer: Option<PathBuf>,
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
trait FileSource {
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

struct HubRepo {
    id: String,
    options: HubOptions,
    /// Files the repository has, asked once when online.
    listing: Option<Vec<String>>,
    api: Option<hf_hub::api::sync::ApiRepo>,
}

impl HubRepo {
    fn new(id: &str, options: &HubOptions) -> Result<Self> {
        let mut repo = HubRepo {
            id: id.to_string(),
            options: options.clone(),
            listing: None,
            api: None,
        };
        if !options.offline {
            let hub_err = |e: hf_hub::api::sync::ApiError| ModelError::Hub {
                model: id.to_string(),
                message: format!("{e} (set HF_HUB_OFFLINE=1 to use only the local cache)"),
            };
            let api = hf_hub::api::sync::ApiBuilder::from_cache(hf_hub::Cache::new(
                options.cache_dir.clone(),
            ))
            .with_progress(true)
            .build()
            .map_err(hub_err)?
            .repo(repo.hub_repo());
            let info = api.info().map_err(hub_err)?;
            repo.listing = Some(info.siblings.into_iter().map(|s| s.rfilename).collect());
            repo.api = Some(api);
        }
        Ok(repo)
    }

    fn hub_repo(&self) -> Repo {
        Repo::with_revision(
            self.id.clone(),
            RepoType::Model,
            self.options.revision.clone(),
        )
    }

    /// The snapshot folder of the revision in the local cache, if any.
    fn cached(&self, name: &str) -> Option<PathBuf> {
        let repo = self.hub_repo();
        let revision = &self.options.revision;
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        if is_commit {
            let path = self
                .options
                .cache_dir
                .join(repo.folder_name())
                .join("snapshots")
                .join(revision)
                .join(name);
            return path.is_file().then_some(path);
        }
        hf_hub::Cache::new(self.options.cache_dir.clone())
            .repo(repo)
            .get(name)
    }
}

impl FileSource for HubRepo {
    fn fetch(&self, name: &str) -> Result<Option<PathBuf>> {
        if let Some(path) = self.cached(name) {
            return Ok(Some(path));
        }
        let (Some(api), Some(listing)) = (&self.api, &self.listing) else {
            return Ok(None);
        };
        if !listing.iter().any(|f| f == name) {
            return Ok(None);
        }
        api.get(name).map(Some).map_err(|e| ModelError::Hub {
            model: self.id.clone(),
            message: format!("downloading {name}: {e}"),
        })
    }
    fn describe(&self) -> String {
        let mode = if self.options.offline {
            "offline, cache only"
        } else {
            "hub"
        };
        format!(
            "hub model {} at revision {} ({mode}, cache {})",
            self.id,
            self.options.revision,
            self.options.cache_dir.display()
        )
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
    Ok(ModelFiles {
        config,
        weights,
        tokenizer: source.fetch("tokenizer.json")?,
        tokenizer_config: source.fetch("tokenizer_config.json")?,
        generation_config: source.fetch("generation_config.json")?,
        chat_template: source.fetch("chat_template.jinja")?,
    })
}

/// Resolves `model` — a folder, or a hub id such as `deepseek-ai/DeepSeek-V2-Lite-Chat` —
/// to its files, downloading into the hub cache when allowed.
pub fn resolve_model(model: &str, hub: &HubOptions) -> Result<ModelFiles> {
    let path = Path::new(model);
    if path.is_dir() {
        return collect_files(&Folder(path.to_path_buf()));
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

/// The memory-mapped safetensors of a checkpoint, readable by tensor name.
pub struct Checkpoint {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
    fp8: Option<Fp8BlockQuant>,
}

impl Checkpoint {
    pub fn open(paths: &[PathBuf], fp8: Option<Fp8BlockQuant>) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut routing = HashMap::new();
        for (index, path) in paths.iter().enumerate() {
            // SAFETY: the mapping is read-only; like every safetensors loader we rely on
            // the file not being truncated while the server runs.
            let st = unsafe { MmapedSafetensors::new(path) }?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            files.push((path.clone(), st));
        }
        Ok(Checkpoint {
            files,
            routing,
            fp8,
        })
    }

    /// A `VarBuilder` over this checkpoint producing tensors in `dtype`.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(self);
        VarBuilder::from_backend(backend, dtype, device.clone())
    }

    /// The dtype a tensor is stored in, if present.
    pub fn stored_dtype(&self, name: &str) -> Option<DType> {
        let index = *self.routing.get(name)?;
        let view = self.files[index].1.get(name).ok()?;
        DType::try_from(view.dtype()).ok()
    }

    fn file_of(&self, name: &str) -> Result<&(PathBuf, MmapedSafetensors)> {
        let index = self
            .routing
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                name: name.to_string(),
                searched: self.describe_files(),
            })?;
        Ok(&self.files[*index])
    }

    fn describe_files(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect();
        format!("searched {}", names.join(", "))
    }

    fn load_raw(&self, name: &str, device: &Device) -> Result<(Tensor, &Path)> {
        let (path, st) = self.file_of(name)?;
        let tensor = st.get(name)?.load(device)?;
        Ok((tensor, path))
    }

    /// Loads `name`, dequantizing block-scaled FP8, and checks its shape.
    fn load(
        &self,
        name: &str,
        shape: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let (tensor, path) = self.load_raw(name, dev)?;
        if let Some(shape) = shape {
            if tensor.dims() != shape.dims() {
                return Err(ModelError::TensorShape {
                    name: name.to_string(),
                    file: path.to_path_buf(),
                    expected: shape.dims().to_vec(),
                    found: tensor.dims().to_vec(),
                });
            }
        }
        let tensor = if tensor.dtype() == DType::F8E4M3 {
            self.dequantize_fp8(name, tensor, path, dev)?
        } else {
            tensor
        };
        Ok(tensor.to_dtype(dtype)?)
    }

    fn dequantize_fp8(
        &self,
        name: &str,
        weight: Tensor,
        file: &Path,
        dev: &Device,
    ) -> Result<Tensor> {
        let Some(fp8) = &self.fp8 else {
            return Err(ModelError::config(
                "quantization_config",
                format!(
                    "is absent but tensor `{name}` in {} is stored as FP8",
                    file.display()
                ),
            ));
        };
        let scale_name = format!("{name}_scale_inv");
        let (scale, scale_file) = self.load_raw(&scale_name, dev)?;
        dequantize_block_fp8(&weight, &scale, fp8.block_size).map_err(|e| match e {
            ModelError::TensorShape {
                expected, found, ..
            } => ModelError::TensorShape {
                name: scale_name,
                file: scale_file.to_path_buf(),
                expected,
                found,
            },
            other => other,
        })
    }
}

/// `weight * scale` where each `[br, bc]` block of the weight shares one scale.
pub fn dequantize_block_fp8(weight: &Tensor, scale: &Tensor, block: [usize; 2]) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    let [br, bc] = block;
    let (sr, sc) = (rows.div_ceil(br), cols.div_ceil(bc));
    if scale.dims() != [sr, sc] {
        return Err(ModelError::TensorShape {
            name: String::new(),
            file: PathBuf::new(),
            expected: vec![sr, sc],
            found: scale.dims().to_vec(),
        });
    }
    let weight = weight.to_dtype(DType::F32)?;
    // Expand the scales to full size (cropping the padding of partial blocks).
    let full = scale
        .to_dtype(DType::F32)?
        .reshape((sr, 1, sc, 1))?
        .broadcast_as((sr, br, sc, bc))?
        .reshape((sr * br, sc * bc))?
        .narrow(0, 0, rows)?
        .narrow(1, 0, cols)?;
    Ok((weight * full)?)
}

impl SimpleBackend for Checkpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load(name, Some(&s), dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, None, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.routing.contains_key(name)
    }
}
