//! A bias-free linear layer `y = x · Wᵀ` over a `[out, in]` checkpoint weight.
//!
//! On CPU with f32 activations, the few rows of a decode step go through
//! [`decode_matmul`](super::decode_matmul) (one read of the weight, f32 or
//! bf16); larger inputs use candle's GEMM, with a bf16 weight widened to f32
//! for the call.

use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::decode_matmul::{matmul_rows, WeightRows};

/// Most rows the decode kernel takes for an f32 weight; candle's GEMM wins
/// above (it blocks for registers; the kernel is then compute-bound).
const DECODE_ROWS_F32: usize = 8;
/// For a bf16 weight the alternative is widening the whole weight per call,
/// so the kernel keeps the job for larger batches.
const DECODE_ROWS_BF16: usize = 64;

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
}

impl Linear {
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Linear {
            weight: vb.get((out_dim, in_dim), "weight")?,
        })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear { weight }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Linear {
    fn decode(&self, x: &Tensor, m: usize, k: usize) -> Result<Tensor> {
        let n = self.weight.dim(0)?;
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = self.weight.storage_and_layout();
        let (Storage::Cpu(xs), Storage::Cpu(ws)) = (&*xs, &*ws) else {
            candle_core::bail!("the decode kernel runs on CPU tensors only");
        };
        let x_rows = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
        let (w0, w1) = (wl.start_offset(), wl.start_offset() + n * k);
        let w = match self.weight.dtype() {
            DType::F32 => WeightRows::F32(&ws.as_slice::<f32>()?[w0..w1]),
            DType::BF16 => WeightRows::Bf16(&ws.as_slice::<half::bf16>()?[w0..w1]),
            other => {
                candle_core::bail!("the decode kernel takes f32 or bf16 weights, not {other:?}")
            }
        };
        let out = matmul_rows(x_rows, m, k, w, n);
        Tensor::from_vec(out, (m, n), x.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = &self.weight;
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2 {
            let (m, k) = x.dims2()?;
            let limit = match w.dtype() {
                DType::F32 => DECODE_ROWS_F32,
                DType::BF16 => DECODE_ROWS_BF16,
                _ => 0,
            };
            if m <= limit && w.is_contiguous() {
                return self.decode(x, m, k);
            }
        }
        if w.dtype() != x.dtype() {
            return x.matmul(&w.to_dtype(x.dtype())?.t()?);
        }
        x.matmul(&w.t()?)
    }
}
