//! [`GgufCheckpoint`]: a llama.cpp GGUF file of architecture `deepseek2`
//! (and the other files of a split set), memory-mapped, presented as a
//! candle `VarBuilder` backend under the Hugging Face tensor names the model
//! code asks for ([`names`]), with a [`DeepSeekConfig`] built from its
//! metadata ([`config`]).
//!
//! candle's `gguf_file::Content` reads each file's header; the tensors are
//! read from the mapping on demand, F32, F16 and BF16 as they are and the
//! quantized types candle decodes (Q4_0 to Q8_0, Q2_K to Q6_K) dequantized
//! to f32. A quantized linear layer takes a Q8_0, Q2_K to Q6_K, Q4_0,
//! Q4_1, Q5_0 or Q5_1 weight's blocks as they are, asking for them by a
//! name of [`STORED_BLOCKS`] beside its `weight`, and repacks them for the
//! packed kernels without rounding again (without those kernels, formats
//! candle runs slowly are decoded and quantized as the model is: a
//! quantized file defaults to Q8_0).
//! MLA's per-head matrices are offered as they are where the file splits
//! `kv_b_proj` (`attn_k_b`, `attn_v_b`: [`names`]); where it does not, the
//! model cuts them from the decoded `kv_b_proj` and rounds them again,
//! which for Q8_0 gives back the same blocks (Q8_0 rounding is idempotent:
//! see `q8_0_file_blocks_survive_requantizing`). GGUF lists dims innermost
//! first; candle's reader reverses them to PyTorch order.
//! Other tensor types (the IQ formats, ...) are refused by name.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::DeepSeekConfig;
use crate::error::{ModelError, Result};
use crate::layers::linear::STORED_BLOCKS;

mod config;
mod names;
#[cfg(test)]
mod tests;
mod vocab;

pub use vocab::GgufVocab;

use names::Source;

/// One file of the set: its mapping and header.
struct Shard {
    path: PathBuf,
    mmap: memmap2::Mmap,
    content: Content,
}

/// The memory-mapped GGUF files of a checkpoint, readable by Hugging Face
/// tensor name.
pub struct GgufCheckpoint {
    shards: Vec<Shard>,
    /// GGUF tensor name → index of the shard holding it.
    routing: HashMap<String, usize>,
}

/// The files of a split set given its first (`…-00001-of-0000N.gguf`), or
/// the one file of an unsplit checkpoint.
pub(crate) fn split_files(first: &Path) -> Result<Vec<PathBuf>> {
    let name = first
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let Some((prefix, index, count)) = split_name(name) else {
        return Ok(vec![first.to_path_buf()]);
    };
    if index != 1 {
        return Err(gguf_error(
            first,
            format!("is file {index} of a split set of {count}: give the first, -00001-of-{count:05}.gguf"),
        ));
    }
    let folder = first.parent().unwrap_or(Path::new(""));
    (1..=count)
        .map(|i| {
            let path = folder.join(format!("{prefix}-{i:05}-of-{count:05}.gguf"));
            if path.is_file() {
                Ok(path)
            } else {
                Err(gguf_error(
                    first,
                    format!("split file {} is missing", path.display()),
                ))
            }
        })
        .collect()
}

/// `(prefix, index, count)` of `prefix-00001-of-00003.gguf`.
pub(crate) fn split_name(name: &str) -> Option<(&str, usize, usize)> {
    let stem = name.strip_suffix(".gguf")?;
    let (rest, count) = stem.rsplit_once("-of-")?;
    let (prefix, index) = rest.rsplit_once('-')?;
    let number = |s: &str| {
        (s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<usize>().ok())
            .flatten()
    };
    let (index, count) = (number(index)?, number(count)?);
    (index >= 1 && index <= count).then_some((prefix, index, count))
}

pub(crate) fn gguf_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

fn open_shard(path: &Path) -> Result<Shard> {
    let file = std::fs::File::open(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    // SAFETY: the mapping is read-only; like every GGUF and safetensors
    // loader we rely on the file not being truncated while the server runs.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = Content::read(&mut std::io::Cursor::new(&mmap[..]))
        .map_err(|e| gguf_error(path, format!("not a readable GGUF file: {e}")))?;
    Ok(Shard {
        path: path.to_path_buf(),
        mmap,
        content,
    })
}

/// An unsigned integer split key of `shard`, if present.
fn split_key(shard: &Shard, key: &str) -> Option<u64> {
    match shard.content.metadata.get(key)? {
        Value::U16(v) => Some(*v as u64),
        Value::U32(v) => Some(*v as u64),
        Value::I32(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

impl GgufCheckpoint {
    /// Maps `paths` (the first holds the metadata) and checks that they
    /// form one set: each file's `split.no` in order, no tensor twice, and
    /// as many tensors as `split.tensors.count` says.
    pub fn open(paths: &[PathBuf]) -> Result<Self> {
        let shards = paths
            .iter()
            .map(|p| open_shard(p))
            .collect::<Result<Vec<_>>>()?;
        if let Some(count) = shards.first().and_then(|s| split_key(s, "split.count")) {
            if count.max(1) != shards.len() as u64 {
                return Err(gguf_error(
                    &paths[0],
                    format!(
                        "`split.count` says the set has {count} files, but {} were given: give the first file, named …-00001-of-{count:05}.gguf",
                        shards.len()
                    ),
                ));
            }
        }
        let mut routing = HashMap::new();
        for (index, shard) in shards.iter().enumerate() {
            if shards.len() > 1 && split_key(shard, "split.no") != Some(index as u64) {
                return Err(gguf_error(
                    &shard.path,
                    format!("`split.no` should be {index} for this file of the set"),
                ));
            }
            for name in shard.content.tensor_infos.keys() {
                if routing.insert(name.clone(), index).is_some() {
                    return Err(gguf_error(
                        &shard.path,
                        format!("tensor `{name}` is also in an earlier file of the set"),
                    ));
                }
            }
        }
        if let Some(total) = shards
            .first()
            .and_then(|s| split_key(s, "split.tensors.count"))
        {
            if total != routing.len() as u64 {
                return Err(gguf_error(
                    &paths[0],
                    format!(
                        "`split.tensors.count` is {total} but the files hold {} tensors",
                        routing.len()
                    ),
                ));
            }
        }
        Ok(GgufCheckpoint { shards, routing })
    }

    /// The first file, whose metadata describes the model.
    fn main(&self) -> &Shard {
        &self.shards[0]
    }

    /// The model's configuration, from the metadata.
    pub fn config(&self) -> Result<DeepSeekConfig> {
        config::deepseek_config(self)
    }

    /// A `VarBuilder` over this checkpoint producing tensors in `dtype`.
    pub fn var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(self);
        VarBuilder::from_backend(backend, dtype, device.clone())
    }

    /// The GGML type a GGUF tensor is stored in, if present.
    pub fn stored_type(&self, gguf_name: &str) -> Option<GgmlDType> {
        self.info(gguf_name).map(|(info, _)| info.ggml_dtype)
    }

    fn has(&self, gguf_name: &str) -> bool {
        self.routing.contains_key(gguf_name)
    }

    fn info(&self, gguf_name: &str) -> Option<(&TensorInfo, &Shard)> {
        let shard = &self.shards[*self.routing.get(gguf_name)?];
        Some((shard.content.tensor_infos.get(gguf_name)?, shard))
    }

    /// The dims (PyTorch order) of a GGUF tensor, if present.
    fn dims(&self, gguf_name: &str) -> Option<&[usize]> {
        self.info(gguf_name).map(|(info, _)| info.shape.dims())
    }

    /// Tensor `gguf_name`, or with `item` the `item`-th slice of its outer
    /// dim (one expert of a stacked expert tensor), as stored (F32, F16,
    /// BF16) or dequantized to f32 (the quantized types), on the CPU.
    fn read(&self, gguf_name: &str, item: Option<usize>) -> Result<Tensor> {
        let (bytes, dims, ggml) = self.bytes(gguf_name, item)?;
        let cpu = Device::Cpu;
        let dtype = match ggml {
            GgmlDType::F32 => DType::F32,
            GgmlDType::F16 => DType::F16,
            GgmlDType::BF16 => DType::BF16,
            _ => {
                let storage = QStorage::from_data(Cow::Borrowed(bytes), &cpu, ggml)?;
                return Ok(QTensor::new(storage, dims)?.dequantize(&cpu)?);
            }
        };
        Ok(Tensor::from_raw_buffer(bytes, dtype, &dims, &cpu)?)
    }

    /// The GGUF tensor (and expert) behind `<hf weight>.q8_0_blocks` (or
    /// another of [`STORED_BLOCKS`]), when it is stored in that format.
    fn blocks_source(&self, hf_name: &str) -> Option<(String, Option<usize>)> {
        STORED_BLOCKS.iter().find_map(|(ggml, blocks)| {
            let weight = hf_name.strip_suffix(blocks.strip_prefix("weight")?)?;
            let (name, item) = match names::source(weight, |n| self.has(n))? {
                Source::Tensor(name) => (name, None),
                Source::Expert(name, e) => (name, Some(e)),
                Source::SplitKvB { .. } => return None,
            };
            (self.stored_type(&name) == Some(*ggml)).then_some((name, item))
        })
    }

    /// The stored bytes of a 2-D quantized weight as `[rows, row bytes]` u8.
    fn read_blocks(&self, gguf_name: &str, item: Option<usize>) -> Result<Tensor> {
        let (bytes, dims, _) = self.bytes(gguf_name, item)?;
        let rows: usize = dims[..dims.len().saturating_sub(1)].iter().product();
        Ok(Tensor::from_slice(
            bytes,
            (rows, bytes.len() / rows.max(1)),
            &Device::Cpu,
        )?)
    }

    /// The stored bytes of tensor `gguf_name` (or of its `item`-th outer
    /// slice), its dims (PyTorch order) and type; a type candle cannot
    /// decode is an error.
    fn bytes(
        &self,
        gguf_name: &str,
        item: Option<usize>,
    ) -> Result<(&[u8], Vec<usize>, GgmlDType)> {
        let missing = || ModelError::MissingTensor {
            name: gguf_name.to_string(),
            searched: format!(
                "searched {}",
                self.shards
                    .iter()
                    .map(|s| s.path.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let (info, shard) = self.info(gguf_name).ok_or_else(missing)?;
        let ggml = info.ggml_dtype;
        match ggml {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {}
            GgmlDType::Q4_0 | GgmlDType::Q4_1 | GgmlDType::Q5_0 | GgmlDType::Q5_1 => {}
            GgmlDType::Q8_0 | GgmlDType::Q2K | GgmlDType::Q3K => {}
            GgmlDType::Q4K | GgmlDType::Q5K | GgmlDType::Q6K => {}
            other => {
                return Err(gguf_error(
                    &shard.path,
                    format!(
                        "tensor `{gguf_name}` is stored as {other:?}, which is not supported yet (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and Q2_K to Q6_K are)"
                    ),
                ))
            }
        };
        let bad = |what: &str| gguf_error(&shard.path, format!("tensor `{gguf_name}` {what}"));
        let mut dims = info.shape.dims().to_vec();
        if !dims
            .last()
            .is_some_and(|d| d.is_multiple_of(ggml.block_size()))
        {
            return Err(bad("has rows that are not whole blocks of its type"));
        }
        let whole = info.shape.elem_count() / ggml.block_size() * ggml.type_size();
        let (mut start, mut len) = (info.offset as usize, whole);
        if let Some(item) = item {
            let outer = dims.first().copied().unwrap_or(0);
            if item >= outer || dims.len() < 2 {
                return Err(missing());
            }
            len = whole / outer;
            start += item * len;
            dims.remove(0);
        }
        let beyond = || bad("lies beyond the end of the file");
        let begin = (shard.content.tensor_data_offset as usize)
            .checked_add(start)
            .ok_or_else(beyond)?;
        let end = begin.checked_add(len).ok_or_else(beyond)?;
        let bytes = shard.mmap.get(begin..end).ok_or_else(beyond)?;
        // candle reads quantized blocks in place; theirs hold f16 numbers.
        if !bytes.as_ptr().cast::<half::f16>().is_aligned() {
            return Err(bad("is not aligned to 2 bytes in the file"));
        }
        Ok((bytes, dims, ggml))
    }

    /// `hf_name` (a Hugging Face checkpoint name) read from wherever the
    /// GGUF keeps it, in PyTorch's shape.
    fn load(&self, hf_name: &str) -> Result<Tensor> {
        let missing = || ModelError::MissingTensor {
            name: hf_name.to_string(),
            searched: format!("{} has no GGUF tensor for it", self.main().path.display()),
        };
        if let Some((name, item)) = self.blocks_source(hf_name) {
            return self.read_blocks(&name, item);
        }
        match names::source(hf_name, |n| self.has(n)).ok_or_else(missing)? {
            Source::Tensor(name) => self.read(&name, None),
            Source::Expert(name, e) => self.read(&name, Some(e)),
            Source::SplitKvB { k_b, v_b } => {
                // k_b: [H, rank, nope] (transposed per head), v_b: [H, v, rank];
                // HF's kv_b_proj is per head [nope + v, rank], heads stacked.
                let k = self.read(&k_b, None)?.to_dtype(DType::F32)?;
                let v = self.read(&v_b, None)?.to_dtype(DType::F32)?;
                let (heads, rank, _) = k.dims3()?;
                let kv = Tensor::cat(&[k.transpose(1, 2)?, v], 1)?;
                let rows = kv.dim(1)?;
                Ok(kv.reshape((heads * rows, rank))?)
            }
        }
    }

    fn load_as(
        &self,
        name: &str,
        shape: Option<&Shape>,
        dtype: DType,
        dev: &Device,
    ) -> Result<Tensor> {
        let tensor = self.load(name)?;
        if let Some(shape) = shape {
            if tensor.dims() != shape.dims() {
                return Err(ModelError::TensorShape {
                    name: name.to_string(),
                    file: self.main().path.clone(),
                    expected: shape.dims().to_vec(),
                    found: tensor.dims().to_vec(),
                });
            }
        }
        let tensor = if tensor.dtype() == DType::U8 {
            tensor // Q8_0 blocks, as bytes.
        } else {
            tensor.to_dtype(dtype)?
        };
        Ok(tensor.to_device(dev)?)
    }
}

impl SimpleBackend for GgufCheckpoint {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _h: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        self.load_as(name, Some(&s), dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load_as(name, None, dtype, dev)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.blocks_source(name).is_some() || names::source(name, |n| self.has(n)).is_some()
    }
}
