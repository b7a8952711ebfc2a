//! A bias-free linear layer `y = x · Wᵀ` over a `[out, in]` checkpoint weight,
//! held dense (f32, bf16, f16) or quantized at load (GGML Q8_0 or Q4_K).
//!
//! On CPU with f32 activations, the few rows of a decode step go through
//! [`decode_matmul`](super::decode_matmul), which reads the weight once (f32,
//! bf16, and Q8_0 where the CPU lacks AVX-512-VNNI); larger inputs use
//! candle's GEMM (a bf16 weight widened to f32 for the call) or candle's
//! quantized matmul, whose kernels use AVX-512-VNNI tiles where the CPU has
//! them.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::decode_matmul::{matmul_rows, WeightRows, Q8_0_BLOCK};

/// Most rows the decode kernel takes for an f32 weight; candle's GEMM wins
/// above (it blocks for registers; the kernel is then compute-bound).
const DECODE_ROWS_F32: usize = 8;
/// For a bf16 weight the alternative is widening the whole weight per call,
/// so the kernel keeps the job for larger batches.
const DECODE_ROWS_BF16: usize = 64;
/// For Q8_0 on a CPU without AVX-512-VNNI, candle's one-row quantized matmul
/// is compute-bound and our kernel reads faster; with VNNI, candle's
/// repacked kernels win at every batch size (benches/kernels.rs).
const DECODE_ROWS_Q8_0: usize = 8;

fn candle_q8_0_is_fast() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni") && std::is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// In-situ quantization of the linear weights at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    #[default]
    None,
    /// 8-bit, blocks of 32 with one f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit k-quants, super-blocks of 256 (4.5 bits per weight).
    Q4K,
}

impl Quantization {
    fn ggml(self) -> Option<GgmlDType> {
        match self {
            Quantization::None => None,
            Quantization::Q8_0 => Some(GgmlDType::Q8_0),
            Quantization::Q4K => Some(GgmlDType::Q4K),
        }
    }
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "none" => Ok(Quantization::None),
            "q8_0" => Ok(Quantization::Q8_0),
            "q4_k" | "q4k" => Ok(Quantization::Q4K),
            other => Err(format!(
                "unknown quantization `{other}` (expected none, q8_0 or q4_k)"
            )),
        }
    }
}

/// How the weight matrices of linear layers are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeightFormat {
    /// The dtype of dense weights.
    pub dtype: DType,
    pub quantize: Quantization,
}

impl WeightFormat {
    pub fn dense(dtype: DType) -> Self {
        WeightFormat {
            dtype,
            quantize: Quantization::None,
        }
    }
}

#[derive(Debug, Clone)]
enum Weight {
    Dense(Tensor),
    Quantized { q: Arc<QTensor>, mm: QMatMul },
}

#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
}

impl Linear {
    /// A dense weight in `vb`'s dtype.
    pub fn new(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Linear {
            weight: Weight::Dense(vb.get((out_dim, in_dim), "weight")?),
        })
    }

    /// A weight held as `format` says. A weight whose input width is not a
    /// whole number of quantization blocks (32 for Q8_0, 256 for Q4_K) stays
    /// dense: only tiny models have such layers.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        format: WeightFormat,
    ) -> Result<Self> {
        let Some(ggml) = format.quantize.ggml() else {
            return Self::new(in_dim, out_dim, vb.set_dtype(format.dtype));
        };
        if !in_dim.is_multiple_of(ggml.block_size()) {
            return Self::new(in_dim, out_dim, vb.set_dtype(format.dtype));
        }
        let dense = vb.set_dtype(DType::F32).get((out_dim, in_dim), "weight")?;
        let q = Arc::new(QTensor::quantize(&dense, ggml)?);
        Ok(Linear {
            weight: Weight::Quantized {
                mm: QMatMul::from_arc(q.clone())?,
                q,
            },
        })
    }

    pub fn from_weight(weight: Tensor) -> Self {
        Linear {
            weight: Weight::Dense(weight),
        }
    }

    /// The dense weight, `None` when quantized.
    pub fn weight(&self) -> Option<&Tensor> {
        match &self.weight {
            Weight::Dense(w) => Some(w),
            Weight::Quantized { .. } => None,
        }
    }

    /// How the weight is held: its dtype when dense, else the GGML format.
    pub fn format(&self) -> String {
        match &self.weight {
            Weight::Dense(w) => format!("{:?}", w.dtype()).to_lowercase(),
            Weight::Quantized { q, .. } => format!("{:?}", q.dtype()).to_lowercase(),
        }
    }

    /// Bytes the weight takes in memory (what one full read costs).
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Quantized { q, .. } => q.storage_size_in_bytes(),
        }
    }

    fn decode(&self, x: &Tensor, m: usize, k: usize) -> Result<Tensor> {
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let Storage::Cpu(xs) = &*xs else {
            candle_core::bail!("the decode kernel runs on CPU tensors only");
        };
        let x_rows = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * k];
        let out = match &self.weight {
            Weight::Dense(w) => {
                let n = w.dim(0)?;
                let (ws, wl) = w.storage_and_layout();
                let Storage::Cpu(ws) = &*ws else {
                    candle_core::bail!("the decode kernel runs on CPU tensors only");
                };
                let (w0, w1) = (wl.start_offset(), wl.start_offset() + n * k);
                let rows = match w.dtype() {
                    DType::F32 => WeightRows::F32(&ws.as_slice::<f32>()?[w0..w1]),
                    DType::BF16 => WeightRows::Bf16(&ws.as_slice::<half::bf16>()?[w0..w1]),
                    other => {
                        candle_core::bail!(
                            "the decode kernel takes f32 or bf16 weights, not {other:?}"
                        )
                    }
                };
                (matmul_rows(x_rows, m, k, rows, n), n)
            }
            Weight::Quantized { q, .. } => {
                let n = q.shape().dims2()?.0;
                let data = q.data()?;
                (matmul_rows(x_rows, m, k, WeightRows::Q8_0(&data), n), n)
            }
        };
        Tensor::from_vec(out.0, (m, out.1), x.device())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2;
        let rows = if cpu_f32 { x.dim(0)? } else { usize::MAX };
        match &self.weight {
            Weight::Dense(w) => {
                let limit = match w.dtype() {
                    DType::F32 => DECODE_ROWS_F32,
                    DType::BF16 => DECODE_ROWS_BF16,
                    _ => 0,
                };
                if rows <= limit && w.is_contiguous() {
                    return self.decode(x, rows, x.dim(1)?);
                }
                if w.dtype() != x.dtype() {
                    return x.matmul(&w.to_dtype(x.dtype())?.t()?);
                }
                x.matmul(&w.t()?)
            }
            Weight::Quantized { q, mm } => {
                let k = q.shape().dims2()?.1;
                if rows <= DECODE_ROWS_Q8_0
                    && q.dtype() == GgmlDType::Q8_0
                    && k % Q8_0_BLOCK == 0
                    && !candle_q8_0_is_fast()
                {
                    return self.decode(x, rows, k);
                }
                let dtype = x.dtype();
                mm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
            }
        }
    }
}
