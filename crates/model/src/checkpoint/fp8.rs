//! DeepSeek's block-scaled FP8 weights (`quantization_config` method
//! `fp8`): each `[br, bc]` block of an `F8E4M3` weight has one scale, stored
//! beside it as `<name>_scale_inv`; dequantized to f32 at load.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::Checkpoint;
use crate::error::{ModelError, Result};

impl Checkpoint {
    /// `weight` (FP8) times the scales stored beside it, naming the scale
    /// tensor in a shape error.
    pub(super) fn dequantize_fp8(
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
