//! A bias-free linear layer `y = x · Wᵀ` over a `[out, in]` checkpoint weight,
//! held dense (f32, bf16, f16) or quantized at load (GGML Q8_0 or Q4_K).
//!
//! On a CPU with AVX-512-VNNI, a Q8_0 or Q4_K weight is held repacked for
//! our int8 kernels ([`packed`](crate::kernels::packed)), which run every input size.
//! Otherwise, on CPU with f32 activations, the few rows of a decode step go
//! through [`gemv`](crate::kernels::gemv), which reads the weight
//! once (f32, bf16, and Q8_0); larger inputs use candle's GEMM (a bf16
//! weight widened to f32 for the call) or candle's quantized matmul.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use crate::kernels::gemv::{blocked_kernel, matmul_groups, matmul_shared, WeightRows};
use crate::kernels::packed::{self, Packed};
use crate::quant::{pack_rows, quantize_rows, Quantization};

mod grouped;
pub use grouped::GroupedLinear;

/// The names, beside a linear layer's `weight`, under which a checkpoint
/// that stores the weight as GGML blocks of a format the packed kernels
/// run offers those bytes, `[out, row bytes]` (a GGUF file does;
/// safetensors never). Where the CPU lacks the packed kernels, only some
/// are taken ([`runs_as_stored`]).
pub const STORED_BLOCKS: [(GgmlDType, &str); 10] = [
    (GgmlDType::Q8_0, "weight.q8_0_blocks"),
    (GgmlDType::Q4K, "weight.q4_k_blocks"),
    (GgmlDType::Q5K, "weight.q5_k_blocks"),
    (GgmlDType::Q6K, "weight.q6_k_blocks"),
    (GgmlDType::Q5_0, "weight.q5_0_blocks"),
    (GgmlDType::Q4_0, "weight.q4_0_blocks"),
    (GgmlDType::Q5_1, "weight.q5_1_blocks"),
    (GgmlDType::Q4_1, "weight.q4_1_blocks"),
    (GgmlDType::Q3K, "weight.q3_k_blocks"),
    (GgmlDType::Q2K, "weight.q2_k_blocks"),
];

/// The weight's stored blocks and their format, if the checkpoint offers
/// them in a format worth running as stored here ([`runs_as_stored`]).
fn stored_blocks(vb: &VarBuilder) -> Result<Option<(GgmlDType, Tensor)>> {
    for (ggml, name) in STORED_BLOCKS {
        if runs_as_stored(ggml, Packed::available()) && vb.contains_tensor(name) {
            return Ok(Some((ggml, vb.get_unchecked_dtype(name, DType::U8)?)));
        }
    }
    Ok(None)
}

/// Whether a weight stored in `ggml` runs as stored, `packed` saying
/// whether the CPU runs the packed kernels (which take every format of
/// [`STORED_BLOCKS`]). Without them candle's quantized matmul runs the
/// blocks (`--bench kernels -- packed`, candle's columns, against its
/// Q8_0):
/// - Q8_0, Q4_K (repacked) and Q6_K: fast; kept.
/// - Q3_K and Q2_K: as fast for one row (0.74-1.0 ms against 0.78), 2.6-4
///   times slower for batches; kept all the same, since rounding them to
///   Q8_0 would take 2.4-2.7 times the memory, and these are the formats
///   chosen to fit a model in memory.
/// - Q4_0 3-8 times slower, Q5_0 and Q5_1 20-90 (no vector kernel), Q5_K
///   6 times at batch sizes, for 1.5-1.9 times less memory than Q8_0:
///   decoded and rounded as the model is quantized instead, as a format
///   no kernel takes is.
pub(crate) fn runs_as_stored(ggml: GgmlDType, packed: bool) -> bool {
    packed
        || matches!(
            ggml,
            GgmlDType::Q8_0 | GgmlDType::Q4K | GgmlDType::Q6K | GgmlDType::Q3K | GgmlDType::Q2K
        )
}

/// `f` of the numbers of `t`, a CPU tensor, read in place out of its
/// storage (a copy of every weight took a tenth of a load, and as much
/// again in page faults).
fn in_place<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("the numbers of a tensor that is not on the CPU");
    };
    Ok(f(
        &cpu.as_slice::<T>()?[layout.start_offset()..][..t.elem_count()]
    ))
}

/// Most rows the decode kernel takes for an f32 weight; candle's GEMM wins
/// above (it blocks for registers; the kernel's AVX2 tiles are then
/// compute-bound). At 16 rows the kernel still wins: the GEMM runs on
/// rayon's pool, beside the one the rest of the step runs on. With AVX-512
/// the kernel's register-blocked path beats candle's GEMM up to 64 rows
/// (`--bench kernels`; the figures behind these limits are in
/// `crates/model/benches/README.md`).
fn decode_rows_f32() -> usize {
    if blocked_kernel() {
        64
    } else {
        16
    }
}
/// For a bf16 weight the alternative is widening the whole weight per call,
/// so the kernel keeps the job for larger batches: up to 64 rows, or with
/// the register-blocked kernel (AVX-512) 256, where it still beats widening
/// plus candle's GEMM.
fn decode_rows_bf16() -> usize {
    if blocked_kernel() {
        256
    } else {
        64
    }
}
/// For Q8_0 on a CPU without AVX-512-VNNI, candle's one-row quantized matmul
/// is compute-bound and our kernel reads faster; with VNNI, weights are
/// packed for our int8 kernel, and where a shape does not tile, candle's
/// repacked kernels win at every batch size (benches/kernels.rs).
const DECODE_ROWS_Q8_0: usize = 8;

/// Whether candle's x86 matmul runs a Q4_K weight of `n` rows of `k` from
/// its repacked 16-row tiles (any AVX2 CPU, whole tiles). A tile holds each
/// row's eight sub-block scales and mins widened to f32 beside the packed
/// nibbles: 3072 bytes per 16 x 256 weights (6 bits a weight) against
/// Q4_K's 2304 (4.5 bits), and it is built beside the original on first
/// use.
fn candle_repacks_q4k(n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && n.is_multiple_of(16)
            && k.is_multiple_of(256)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        false
    }
}

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
    Quantized {
        q: Arc<QTensor>,
        mm: QMatMul,
    },
    /// Q8_0 repacked for the VNNI kernel, on CPUs that have it (the only
    /// copy): it runs every input size.
    Packed(Packed),
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

    /// A weight held as `format` says.
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        vb: VarBuilder,
        format: WeightFormat,
    ) -> Result<Self> {
        match format.quantize.ggml_for(in_dim) {
            None => Self::new(in_dim, out_dim, vb.set_dtype(format.dtype)),
            // Stored blocks of a format the kernels run are held as they
            // are, whichever quantization was asked for: rounding them
            // again could only lose.
            Some(_) => match stored_blocks(&vb)? {
                Some((ggml, blocks)) => Self::from_blocks(&blocks, ggml, in_dim, out_dim),
                None => Self::from_tensor(
                    &vb.set_dtype(DType::F32).get((out_dim, in_dim), "weight")?,
                    format,
                ),
            },
        }
    }

    /// `weight` (`[out, in]`) held as `format` says. Q4_K needs input widths
    /// in whole 256-weight blocks: a narrower weight (MLA's 128-wide key
    /// heads) is held in Q8_0 instead; one that is not whole 32-weight
    /// blocks either stays dense (only tiny models have such layers).
    pub fn from_tensor(weight: &Tensor, format: WeightFormat) -> Result<Self> {
        let in_dim = weight.dim(1)?;
        let Some(ggml) = format.quantize.ggml_for(in_dim) else {
            return Ok(Self::from_weight(
                weight.to_dtype(format.dtype)?.contiguous()?,
            ));
        };
        let threads = crate::kernels::parallel::spare_threads();
        let (dims, values) = (weight.dims2()?, weight.to_dtype(DType::F32)?);
        let q = if weight.device().is_cpu() {
            // The numbers read in place (once), by their layout's offset (a
            // per-head slice of `kv_b_proj` is a view): packed where the
            // kernels take the shape, else candle's blocks.
            let held = in_place(
                &values,
                |v| -> Result<std::result::Result<Packed, QTensor>> {
                    match pack_rows(v, dims, ggml, threads)? {
                        Some(packed) => Ok(Ok(packed)),
                        None => quantize_rows(v, dims, ggml, threads).map(Err),
                    }
                },
            )??;
            match held {
                Ok(packed) => {
                    return Ok(Linear {
                        weight: Weight::Packed(packed),
                    })
                }
                Err(q) => q,
            }
        } else {
            // Fresh tensors: candle's `QTensor::quantize` reads its
            // source's storage from the start, ignoring a view's offset.
            let values = values.flatten_all()?.to_vec1::<f32>()?;
            QTensor::quantize(
                &Tensor::from_vec(values, weight.shape(), weight.device())?,
                ggml,
            )?
        };
        let q = Arc::new(q);
        Ok(Linear {
            weight: Weight::Quantized {
                mm: QMatMul::from_arc(q.clone())?,
                q,
            },
        })
    }

    /// A weight stored as `ggml` blocks (`[out, row bytes]`, GGML's layout,
    /// which candle's is), held without rounding again: packed for the
    /// VNNI kernels where the CPU has them, else as candle's blocks (its
    /// quantized matmul runs every format of [`STORED_BLOCKS`]).
    fn from_blocks(
        blocks: &Tensor,
        ggml: GgmlDType,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<Self> {
        let row_bytes = in_dim / ggml.block_size() * ggml.type_size();
        if blocks.dims() != [out_dim, row_bytes] {
            candle_core::bail!(
                "{ggml:?} blocks of shape {:?}, expected [{out_dim}, {row_bytes}]",
                blocks.dims()
            );
        }
        if blocks.device().is_cpu() {
            let packed = in_place(blocks, |bytes| Packed::new(bytes, ggml, out_dim, in_dim))?;
            if let Some(packed) = packed {
                return Ok(Linear {
                    weight: Weight::Packed(packed),
                });
            }
        }
        let bytes = blocks.flatten_all()?.to_vec1::<u8>()?;
        let storage = QStorage::from_data(Cow::Owned(bytes), blocks.device(), ggml)?;
        let q = Arc::new(QTensor::new(storage, (out_dim, in_dim))?);
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
            Weight::Quantized { .. } | Weight::Packed(_) => None,
        }
    }

    /// Whether the weight is held packed for the VNNI kernel.
    pub(super) fn is_packed(&self) -> bool {
        matches!(self.weight, Weight::Packed(_))
    }

    /// The weight's packed Q8_0 form, if it has one.
    pub(super) fn into_packed(self) -> Option<Packed> {
        match self.weight {
            Weight::Packed(packed) => Some(packed),
            _ => None,
        }
    }

    /// How the weight is held: its dtype when dense, else the GGML format.
    pub fn format(&self) -> String {
        match &self.weight {
            Weight::Dense(w) => format!("{:?}", w.dtype()).to_lowercase(),
            Weight::Quantized { q, .. } => format!("{:?}", q.dtype()).to_lowercase(),
            Weight::Packed(packed) => packed.format().into(),
        }
    }

    /// Bytes the weight takes in memory (what one full read costs).
    /// (For Q4_K that candle repacks, the repacked tiles: those are read.)
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) => w.elem_count() * w.dtype().size_in_bytes(),
            Weight::Quantized { q, .. } => match q.shape().dims2() {
                Ok((n, k)) if q.dtype() == GgmlDType::Q4K && candle_repacks_q4k(n, k) => {
                    n * k / 4096 * 3072
                }
                _ => q.storage_size_in_bytes(),
            },
            Weight::Packed(packed) => packed.bytes(),
        }
    }

    /// Most input rows the decode kernel takes for this weight (0: none).
    fn kernel_rows(&self) -> usize {
        match &self.weight {
            Weight::Dense(w) if w.is_contiguous() && w.device().is_cpu() => match w.dtype() {
                DType::F32 => decode_rows_f32(),
                DType::BF16 => decode_rows_bf16(),
                _ => 0,
            },
            Weight::Quantized { q, .. } if q.dtype() == GgmlDType::Q8_0 => DECODE_ROWS_Q8_0,
            _ => 0,
        }
    }

    /// The decode kernel over the weights of `linears` (each `[n, k]`, all
    /// of kinds the kernel takes) and `x`: `[m, k]` that every weight
    /// multiplies when `shared` ([`matmul_shared`]), else `[m, linears.len()
    /// * k]`, a slice per weight ([`matmul_groups`]).
    fn kernel(linears: &[&Linear], x: &Tensor, n: usize, k: usize, shared: bool) -> Result<Tensor> {
        let m = x.dim(0)?;
        let x = x.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let Storage::Cpu(xs) = &*xs else {
            candle_core::bail!("the decode kernel runs on CPU tensors only");
        };
        let width = if shared { k } else { linears.len() * k };
        let x_rows = &xs.as_slice::<f32>()?[xl.start_offset()..xl.start_offset() + m * width];
        // Hold every weight's storage while the kernel borrows it.
        let mut dense = Vec::new();
        let mut quantized = Vec::new();
        for l in linears {
            match &l.weight {
                Weight::Dense(w) => {
                    let (storage, layout) = w.storage_and_layout();
                    dense.push((storage, layout.start_offset(), w.dtype()));
                }
                Weight::Quantized { q, .. } => quantized.push(q.data()?),
                Weight::Packed(_) => candle_core::bail!("a packed weight in the decode kernel"),
            }
        }
        let (mut dense_iter, mut quantized_iter) = (dense.iter(), quantized.iter());
        let rows = linears
            .iter()
            .map(|l| match &l.weight {
                Weight::Dense(_) => {
                    let (storage, start, dtype) = dense_iter.next().expect("one per dense weight");
                    let Storage::Cpu(ws) = &**storage else {
                        candle_core::bail!("the decode kernel runs on CPU tensors only");
                    };
                    let range = *start..start + n * k;
                    Ok(match dtype {
                        DType::F32 => WeightRows::F32(&ws.as_slice::<f32>()?[range]),
                        DType::BF16 => WeightRows::Bf16(&ws.as_slice::<half::bf16>()?[range]),
                        other => candle_core::bail!(
                            "the decode kernel takes f32, bf16 or Q8_0 weights, not {other:?}"
                        ),
                    })
                }
                Weight::Quantized { .. } => Ok(WeightRows::Q8_0(
                    quantized_iter.next().expect("one per quantized weight"),
                )),
                Weight::Packed(_) => unreachable!("refused above"),
            })
            .collect::<Result<Vec<_>>>()?;
        let out = if shared {
            matmul_shared(x_rows, m, k, &rows, n)
        } else {
            matmul_groups(x_rows, m, k, &rows, n)
        };
        Tensor::from_vec(out, (m, linears.len() * n), x.device())
    }

    /// [`Self::kernel`] over `run` (weights of one shape), each weight's
    /// output a view of the whole.
    fn kernel_run(run: &[&Linear], x: &Tensor, shared: bool) -> Result<Vec<Tensor>> {
        let (n, k) = run[0].dims()?;
        let all = Self::kernel(run, x, n, k, shared)?;
        (0..run.len()).map(|i| all.narrow(1, i * n, n)).collect()
    }

    /// `x · Wᵀ` for every weight of `linears` (all `[_, k]`; `x`: `[m, k]`),
    /// such as an MLP's gate and up projections, or those of all the experts
    /// a decode step runs. A decode step takes as few calls as it can:
    /// packed weights one call of their kernel, others our decode kernel
    /// once per run of equal shapes, or for quantized weights on CPUs where
    /// candle's kernels win, its fused matrix-vector product (one
    /// quantization of `x`, one parallel region for all of them).
    pub fn forward_shared(linears: &[&Linear], x: &Tensor) -> Result<Vec<Tensor>> {
        let packed: Option<Vec<&Packed>> = linears
            .iter()
            .map(|l| match &l.weight {
                Weight::Packed(packed) => Some(packed),
                _ => None,
            })
            .collect();
        if let Some(packs) = packed {
            return Self::forward_packed(&packs, x);
        }
        let rows = Self::decode_rows(x)?.unwrap_or(usize::MAX);
        if linears.iter().all(|l| l.kernel_wins(rows)) {
            let mut outs = Vec::with_capacity(linears.len());
            for run in linears.chunk_by(|a, b| a.dims().ok() == b.dims().ok()) {
                outs.extend(Self::kernel_run(run, x, true)?);
            }
            return Ok(outs);
        }
        let quantized: Option<Vec<&QTensor>> = linears
            .iter()
            .map(|l| match &l.weight {
                Weight::Quantized { q, .. } => Some(q.as_ref()),
                Weight::Dense(_) | Weight::Packed(_) => None,
            })
            .collect();
        if let Some(qs) = quantized {
            if linears.len() > 1 && rows <= DECODE_ROWS_Q8_0 {
                if let Some(outs) = QTensor::gemv_fused_shared_lhs(&qs, x)? {
                    return Ok(outs);
                }
            }
        }
        linears.iter().map(|l| l.forward(x)).collect()
    }

    /// Each of `linears` on its own input (`xs`, all with the same rows),
    /// such as the down projections of a step's experts. A run of equal
    /// shapes that our decode kernel takes is one call, the inputs side by
    /// side ([`matmul_groups`]); the rest take a call each.
    pub fn forward_each(linears: &[&Linear], xs: &[Tensor]) -> Result<Vec<Tensor>> {
        let mut outs = Vec::with_capacity(linears.len());
        let mut inputs = xs;
        for run in linears.chunk_by(|a, b| a.dims().ok() == b.dims().ok()) {
            let (these, rest) = inputs.split_at(run.len());
            inputs = rest;
            let rows = Self::decode_rows(&these[0])?.unwrap_or(usize::MAX);
            if run.len() > 1 && run.iter().all(|l| l.kernel_wins(rows)) {
                outs.extend(Self::kernel_run(run, &Tensor::cat(these, 1)?, false)?);
            } else {
                for (l, x) in run.iter().zip(these) {
                    outs.push(l.forward(x)?);
                }
            }
        }
        Ok(outs)
    }

    /// Whether a CPU f32 input of `rows` rows goes to the decode kernel:
    /// within its row limit, and for Q8_0 only where candle's kernels do not
    /// win (with AVX-512-VNNI its repacked kernels win at every batch size,
    /// benches/kernels.rs).
    fn kernel_wins(&self, rows: usize) -> bool {
        rows <= self.kernel_rows()
            && (matches!(self.weight, Weight::Dense(_)) || !candle_q8_0_is_fast())
    }

    /// `x · Wᵀ` for each of `packs` (all `[_, k]`; `x`: `[.., k]`), in one
    /// call of the packed kernel: `x` is quantized once.
    fn forward_packed(packs: &[&Packed], x: &Tensor) -> Result<Vec<Tensor>> {
        let k = x.dim(candle_core::D::Minus1)?;
        if let Some(p) = packs.iter().find(|p| p.dims().1 != k) {
            candle_core::bail!(
                "input width {k} against a [{}, {}] weight",
                p.dims().0,
                p.dims().1
            );
        }
        let m = x.elem_count() / k;
        let lead = &x.dims()[..x.rank() - 1];
        let starts: Vec<usize> = (0..m).map(|i| i * k).collect();
        let jobs: Vec<(&Packed, Vec<usize>)> = packs.iter().map(|&p| (p, starts.clone())).collect();
        let out = with_f32(x, |xs| packed::matmul_each(xs, &jobs))?;
        // One tensor; each weight's output a view of it.
        let len = out.len();
        let all = Tensor::from_vec(out, len, x.device())?.to_dtype(x.dtype())?;
        let mut at = 0;
        packs
            .iter()
            .map(|p| {
                let n = p.dims().0;
                let part = all.narrow(0, at, m * n)?;
                at += m * n;
                part.reshape([lead, &[n]].concat())
            })
            .collect()
    }

    /// `[out, in]`.
    pub(super) fn dims(&self) -> Result<(usize, usize)> {
        match &self.weight {
            Weight::Dense(w) => w.dims2(),
            Weight::Quantized { q, .. } => q.shape().dims2(),
            Weight::Packed(packed) => Ok(packed.dims()),
        }
    }

    /// Rows of `x` when the decode kernel should take it (CPU, f32, 2-D).
    fn decode_rows(x: &Tensor) -> Result<Option<usize>> {
        if x.device().is_cpu() && x.dtype() == DType::F32 && x.rank() == 2 {
            Ok(Some(x.dim(0)?))
        } else {
            Ok(None)
        }
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Weight::Packed(packed) = &self.weight {
            let mut out = Self::forward_packed(&[packed], x)?;
            return Ok(out.pop().expect("one output per weight"));
        }
        let rows = Self::decode_rows(x)?.unwrap_or(usize::MAX);
        if self.kernel_wins(rows) {
            let (n, k) = self.dims()?;
            return Self::kernel(&[self], x, n, k, false);
        }
        match &self.weight {
            Weight::Dense(w) => {
                if w.dtype() != x.dtype() {
                    return x.matmul(&w.to_dtype(x.dtype())?.t()?);
                }
                x.matmul(&w.t()?)
            }
            Weight::Quantized { mm, .. } => {
                let dtype = x.dtype();
                mm.forward(&x.to_dtype(DType::F32)?)?.to_dtype(dtype)
            }
            Weight::Packed(_) => unreachable!("handled above"),
        }
    }
}

/// `f` on `x`'s numbers, row-major, as f32: borrowed from a contiguous f32
/// CPU tensor (the usual activation), else converted first.
pub(super) fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    if x.dtype() == DType::F32 && x.is_contiguous() {
        let (storage, layout) = x.storage_and_layout();
        if let Storage::Cpu(cpu) = &*storage {
            let start = layout.start_offset();
            return Ok(f(&cpu.as_slice::<f32>()?[start..start + x.elem_count()]));
        }
    }
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(f(&xs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::unit::{max_abs_diff, values};
    use candle_core::Device;

    /// With the packed kernels every stored format runs as stored; without
    /// them, those candle runs about as fast as its Q8_0 for one row, and
    /// none whose rounding to Q8_0 would cost much memory is rounded.
    #[test]
    fn formats_candle_runs_slowly_are_requantized_without_the_packed_kernels() {
        use GgmlDType::{Q2K, Q3K, Q4K, Q6K, Q8_0};
        for (ggml, _) in STORED_BLOCKS {
            assert!(runs_as_stored(ggml, true), "{ggml:?}");
            let kept = matches!(ggml, Q8_0 | Q4K | Q6K | Q3K | Q2K);
            assert_eq!(runs_as_stored(ggml, false), kept, "{ggml:?}");
        }
    }

    /// Linears on their own inputs give what a call each gives, whether a
    /// run of equal shapes shares one kernel call or not.
    #[test]
    fn each_linear_on_its_own_input() {
        let cpu = Device::Cpu;
        let w = |n: usize, k: usize, seed: usize| {
            Tensor::from_vec(values(n * k, seed), (n, k), &cpu).unwrap()
        };
        for dtype in [DType::F32, DType::BF16] {
            let linears: Vec<Linear> = [(40, 64, 1), (40, 64, 2), (40, 32, 3), (40, 64, 4)]
                .iter()
                .map(|&(n, k, seed)| Linear::from_weight(w(n, k, seed).to_dtype(dtype).unwrap()))
                .collect();
            for m in [1, 3] {
                let xs: Vec<Tensor> = linears
                    .iter()
                    .enumerate()
                    .map(|(i, l)| w(m, l.dims().unwrap().1, 10 + i))
                    .collect();
                let refs: Vec<&Linear> = linears.iter().collect();
                let got = Linear::forward_each(&refs, &xs).unwrap();
                for ((l, x), got) in linears.iter().zip(&xs).zip(&got) {
                    let want = l.forward(x).unwrap();
                    assert!(max_abs_diff(got, &want) < 1e-5, "{dtype:?}, {m} rows");
                }
            }
        }
    }
}
