//! [`Checkpoint`]: a checkpoint's safetensors files, memory-mapped,
//! readable by tensor name as a candle `VarBuilder` backend.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::config::Fp8BlockQuant;
use crate::error::{ModelError, Result};

/// The memory-mapped safetensors of a checkpoint, readable by tensor name.
pub struct Checkpoint {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    routing: HashMap<String, usize>,
    pub(super) fp8: Option<Fp8BlockQuant>,
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

    pub(super) fn load_raw(&self, name: &str, device: &Device) -> Result<(Tensor, &Path)> {
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
