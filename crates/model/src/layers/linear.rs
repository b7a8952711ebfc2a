//! A bias-free linear layer `y = x · Wᵀ` over a `[out, in]` checkpoint weight,
//! held dense (f32, bf16, f16) or quantized at load (GGML Q8_0 or Q4_K).
//!
//! On a CPU with AVX-512-VNNI, a Q8_0 or Q4_K weight is held repacked for
//! our int8 kernels ([`packed`](super::packed)), which run every input size.
//! Otherwise, on CPU with f32 activations, the few rows of a decode step go
//! through [`decode_matmul`](super::decode_matmul), which reads the weight
//! once (f32, bf16, and Q8_0); larger inputs use candle's GEMM (a bf16
//! weight widened to f32 for the call) or candle's quantized matmul.

use std::borrow::Cow;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QStorage, QTensor};
use candle_core::{DType, Module, Result, Storage, Tensor};
use candle_nn::VarBuilder;

use super::decode_matmul::{blocked_kernel, matmul_groups, matmul_shared, WeightRows};
use super::packed::{self, Packed, PackedQ4K, PackedQ8};

/// Most rows the decode kernel takes for an f32 weight; candle's GEMM wins
/// above (it blocks for registers; the kernel's AVX2 tiles are then
/// compute-bound). At 16 rows the kernel still wins: the GEMM runs on
/// rayon's pool, beside the one the rest of the step runs on (engine
/// throughput bench, 16 sequences: 138 -> 188 tokens/s with the limit
/// raised from 8 to 16). With AVX-512 the kernel's register-blocked path
/// beats candle's GEMM up to 64 rows (benches/kernels.rs, 8192x4096 f32:
/// 9.9 against 4.5 GB/s at 32 rows, 3.5 against 2.4 at 64).
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
/// plus candle's GEMM (2048x1024 bf16 weight, 2 threads: 4.0-5.6 against
/// 6.6-7.4 ms at 128 rows, 7.5-8.9 against 12.4-14.5 at 256).
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

/// `[n, k]` `values` quantized on the CPU, the rows split over `threads`
/// threads (the compute pool's size): candle quantizes on one thread, and
/// Q4_K's search for each block's scales made loading the 265M benchmark
/// model as q4_k take about 12 s. Blocks lie within rows, so the parts'
/// bytes concatenate to the whole's.
fn quantize_rows(
    values: &[f32],
    (n, k): (usize, usize),
    ggml: GgmlDType,
    threads: usize,
) -> Result<QTensor> {
    let parts = on_row_parts(values, (n, k), threads, 1, |part, rows| {
        let t = Tensor::from_slice(part, (rows, k), &candle_core::Device::Cpu)?;
        Ok(QTensor::quantize(&t, ggml)?.data()?.into_owned())
    })?;
    let cpu = candle_core::Device::Cpu;
    QTensor::new(
        QStorage::from_data(Cow::Owned(parts.concat()), &cpu, ggml)?,
        (n, k),
    )
}

/// [`quantize_rows`], each thread packing its rows for the VNNI kernels
/// too (in whole 16-row tiles, which then follow one another). `None` when
/// the shape does not tile.
fn pack_rows(
    values: &[f32],
    (n, k): (usize, usize),
    ggml: GgmlDType,
    threads: usize,
) -> Result<Option<Packed>> {
    if !Packed::fits(ggml, n, k) {
        return Ok(None);
    }
    let parts = on_row_parts(values, (n, k), threads, 16, |part, rows| {
        match ggml {
            GgmlDType::Q8_0 => return Ok(PackedQ8::quantize(part, rows, k).map(Packed::Q8_0)),
            GgmlDType::Q4K => return Ok(PackedQ4K::quantize(part, rows, k).map(Packed::Q4K)),
            _ => {}
        }
        let t = Tensor::from_slice(part, (rows, k), &candle_core::Device::Cpu)?;
        let q = QTensor::quantize(&t, ggml)?;
        Ok(Packed::new(&q.data()?, ggml, rows, k))
    })?;
    let parts: Option<Vec<Packed>> = parts.into_iter().collect();
    Ok(parts.and_then(|parts| parts.into_iter().reduce(Packed::stack)))
}

/// `f(rows' values, rows)` on consecutive slices of `[n, k]` `values`, each
/// a multiple of `align` rows, on up to `threads` threads; the results in
/// row order.
fn on_row_parts<T: Send>(
    values: &[f32],
    (n, k): (usize, usize),
    threads: usize,
    align: usize,
    f: impl Fn(&[f32], usize) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let threads = threads.min(n.div_ceil(align)).max(1);
    if threads == 1 || values.len() < QUANTIZE_SPLIT {
        return Ok(vec![f(values, n)?]);
    }
    let rows = n.div_ceil(threads).next_multiple_of(align);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = values
            .chunks(rows * k)
            .map(|part| s.spawn(move || f(part, part.len() / k)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// Weights with fewer numbers than this are quantized on one thread.
const QUANTIZE_SPLIT: usize = 1 << 16;

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
    /// The GGML format a weight of input width `in_dim` gets.
    fn ggml_for(self, in_dim: usize) -> Option<GgmlDType> {
        let fits = |t: GgmlDType| in_dim.is_multiple_of(t.block_size());
        match self {
            Quantization::None => None,
            Quantization::Q4K if fits(GgmlDType::Q4K) => Some(GgmlDType::Q4K),
            Quantization::Q8_0 | Quantization::Q4K if fits(GgmlDType::Q8_0) => {
                Some(GgmlDType::Q8_0)
            }
            _ => None,
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
            Some(_) => Self::from_tensor(
                &vb.set_dtype(DType::F32).get((out_dim, in_dim), "weight")?,
                format,
            ),
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
        // Fresh tensors: candle's `QTensor::quantize` reads its source's
        // storage from the start, ignoring a view's offset (a per-head slice
        // of `kv_b_proj` would quantize head 0's numbers).
        let values = weight
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let threads = crate::parallel::threads();
        if weight.device().is_cpu() {
            if let Some(packed) = pack_rows(&values, weight.dims2()?, ggml, threads)? {
                return Ok(Linear {
                    weight: Weight::Packed(packed),
                });
            }
        }
        let q = if weight.device().is_cpu() {
            quantize_rows(&values, weight.dims2()?, ggml, threads)?
        } else {
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

/// A packed weight's numbers as a dense CPU tensor of `dtype`.
fn unpacked(packed: &Packed, dtype: DType) -> Result<Tensor> {
    let cpu = candle_core::Device::Cpu;
    Tensor::from_vec(packed.dequantize(), packed.dims(), &cpu)?.to_dtype(dtype)
}

/// Most decode-kernel calls a [`GroupedLinear`] makes for one input before
/// it makes its weights dense for one batched matmul instead.
const GROUPED_KERNEL_CALLS: usize = 4;

/// Independent linear maps over consecutive slices of the input, one per
/// group: `y[:, g·n..(g+1)·n] = x[:, g·k..(g+1)·k] · W_gᵀ`. MLA's absorbed
/// `kv_b_proj` pieces are one per head. Every group runs in one kernel call:
/// the packed kernel at any size, else the decode kernel within its row
/// limits (larger inputs: one batched matmul, see `forward_kernel`).
#[derive(Debug, Clone)]
pub struct GroupedLinear {
    held: Held,
    groups: usize,
    n: usize,
    k: usize,
}

/// How a [`GroupedLinear`]'s weights are held.
#[derive(Debug, Clone)]
enum Held {
    /// A linear per group; dense ones view `stacked` (`[groups, n, k]`).
    Groups {
        linears: Vec<Linear>,
        stacked: Option<Tensor>,
    },
    /// Q8_0 groups repacked for the VNNI kernel, on CPUs that have it (the
    /// only copy; the expanded attention mode dequantizes it).
    Packed(Vec<Packed>),
}

impl GroupedLinear {
    /// `weights`: `[groups, n, k]`, held as `format` says, except that
    /// Q4_K becomes Q8_0: the per-group matrices are small, and only Q8_0
    /// runs all groups in one decode kernel call.
    pub fn new(weights: &Tensor, format: WeightFormat) -> Result<Self> {
        let format = match format.quantize {
            Quantization::Q4K => WeightFormat {
                quantize: Quantization::Q8_0,
                ..format
            },
            _ => format,
        };
        let (g, n, k) = weights.dims3()?;
        let grouped = |held| GroupedLinear {
            held,
            groups: g,
            n,
            k,
        };
        if format.quantize.ggml_for(k).is_none() {
            let stacked = weights.to_dtype(format.dtype)?.contiguous()?;
            let linears = (0..g)
                .map(|i| Ok(Linear::from_weight(stacked.get(i)?)))
                .collect::<Result<Vec<_>>>()?;
            return Ok(grouped(Held::Groups {
                linears,
                stacked: Some(stacked),
            }));
        }
        let linears = (0..g)
            .map(|i| Linear::from_tensor(&weights.get(i)?, format))
            .collect::<Result<Vec<_>>>()?;
        if linears.iter().all(Linear::is_packed) {
            let packs = linears.into_iter().filter_map(Linear::into_packed);
            return Ok(grouped(Held::Packed(packs.collect())));
        }
        Ok(grouped(Held::Groups {
            linears,
            stacked: None,
        }))
    }

    /// The per-group weights, where every one is repacked for the VNNI
    /// kernels ([`packed`]).
    pub fn packs(&self) -> Option<&[Packed]> {
        match &self.held {
            Held::Packed(packs) => Some(packs),
            Held::Groups { .. } => None,
        }
    }

    /// Bytes a full read of the weights takes.
    pub fn weight_bytes(&self) -> usize {
        match &self.held {
            Held::Packed(packs) => packs.iter().map(Packed::bytes).sum(),
            Held::Groups { linears, .. } => linears.iter().map(Linear::weight_bytes).sum(),
        }
    }

    /// How the weights are held (as [`Linear::format`]).
    pub fn format(&self) -> String {
        match &self.held {
            Held::Packed(packs) => packs.first().map_or("", Packed::format).into(),
            Held::Groups { linears, .. } => {
                linears.first().map_or_else(String::new, Linear::format)
            }
        }
    }

    /// The weights as a dense `[groups, n, k]` tensor of `dtype`
    /// (dequantized when quantized).
    pub fn dense(&self, dtype: DType) -> Result<Tensor> {
        let parts = match &self.held {
            Held::Groups {
                stacked: Some(stacked),
                ..
            } => return stacked.to_dtype(dtype),
            Held::Groups { linears, .. } => linears
                .iter()
                .map(|l| match &l.weight {
                    Weight::Dense(w) => w.to_dtype(dtype),
                    Weight::Quantized { q, .. } => q.dequantize(&q.device())?.to_dtype(dtype),
                    Weight::Packed(p) => unpacked(p, dtype),
                })
                .collect::<Result<Vec<_>>>()?,
            Held::Packed(packs) => packs
                .iter()
                .map(|p| unpacked(p, dtype))
                .collect::<Result<Vec<_>>>()?,
        };
        Tensor::stack(&parts, 0)
    }

    /// Our kernels, where they take `x` (`rows` rows on the CPU in f32):
    /// the packed one, or the decode kernel. Both beat the batched matmul
    /// at every size measured where they run it whole (the packed kernel,
    /// and the register-blocked kernel on AVX-512); elsewhere the decode
    /// kernel takes its row limit per call, for a few calls. `None`: the
    /// input is for one batched matmul.
    fn forward_kernel(&self, x: &Tensor, rows: Option<usize>) -> Result<Option<Tensor>> {
        let Some(rows) = rows else {
            return Ok(None);
        };
        let (linears, stacked) = match &self.held {
            Held::Packed(packs) => {
                let refs: Vec<&Packed> = packs.iter().collect();
                let out = with_f32(x, |xs| packed::matmul_groups(xs, rows, &refs))?;
                return Ok(Some(Tensor::from_vec(
                    out,
                    (rows, self.groups * self.n),
                    x.device(),
                )?));
            }
            Held::Groups { linears, stacked } => (linears, stacked),
        };
        let limit = linears.iter().map(Linear::kernel_rows).min().unwrap_or(0);
        let refs: Vec<&Linear> = linears.iter().collect();
        if rows <= limit || (limit > 0 && blocked_kernel()) {
            return Linear::kernel(&refs, x, self.n, self.k, false).map(Some);
        }
        // A few times the kernel's limit (a batch of decode steps): one
        // kernel call per `limit` rows, unless the weights are already the
        // dense f32 the batched matmul takes. Making them dense costs about
        // as much as reading them once per row.
        let dense_as_is = stacked.as_ref().is_some_and(|w| w.dtype() == x.dtype());
        if dense_as_is || rows > GROUPED_KERNEL_CALLS * limit {
            return Ok(None);
        }
        let x = x.contiguous()?;
        let parts = (0..rows)
            .step_by(limit)
            .map(|r| {
                let chunk = x.narrow(0, r, limit.min(rows - r))?;
                Linear::kernel(&refs, &chunk, self.n, self.k, false)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0).map(Some)
    }
}

impl Module for GroupedLinear {
    /// `x`: `[m, groups·k]` -> `[m, groups·n]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(out) = self.forward_kernel(x, Linear::decode_rows(x)?)? {
            return Ok(out);
        }
        // Larger inputs: one batched matmul over the weights made dense for
        // the call (widening or dequantizing them costs a fraction of the
        // matmul; one small quantized matmul per group cost more).
        let m = x.dim(0)?;
        let w = self.dense(x.dtype())?;
        x.reshape((m, self.groups, self.k))?
            .transpose(0, 1)?
            .contiguous()?
            .matmul(&w.transpose(1, 2)?)?
            .transpose(0, 1)?
            .reshape((m, self.groups * self.n))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::{max_abs, values};
    use candle_core::Device;

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        max_abs(&(a - b).unwrap())
    }

    /// Per group, x's slice times the group's dense (dequantized) weight.
    fn reference(w: &Tensor, x: &Tensor) -> Tensor {
        let (g, _, k) = w.dims3().unwrap();
        let parts: Vec<Tensor> = (0..g)
            .map(|i| {
                x.narrow(1, i * k, k)
                    .unwrap()
                    .matmul(&w.get(i).unwrap().t().unwrap())
                    .unwrap()
            })
            .collect();
        Tensor::cat(&parts, 1).unwrap()
    }

    #[test]
    fn grouped_kernel_and_per_group_matmuls_agree_in_every_format() {
        // 48 rows a group tile for the packed VNNI kernel (where the CPU has
        // it); 40 do not.
        for (g, n, k) in [(3, 40, 64), (3, 48, 64)] {
            grouped_agrees(g, n, k);
        }
    }

    fn grouped_agrees(g: usize, n: usize, k: usize) {
        let w = Tensor::from_vec(values(g * n * k, 1), (g, n, k), &Device::Cpu).unwrap();
        for format in [
            WeightFormat::dense(DType::F32),
            WeightFormat::dense(DType::BF16),
            WeightFormat {
                dtype: DType::F32,
                quantize: Quantization::Q8_0,
            },
        ] {
            let grouped = GroupedLinear::new(&w, format).unwrap();
            let held = grouped.dense(DType::F32).unwrap();
            // The held weights are the given ones, up to rounding.
            assert!(
                max_abs_diff(&held, &w) < 0.01,
                "{format:?}: the held weights are not the given ones"
            );
            // By format and CPU: the packed kernel, the decode kernel (in
            // one call, or a few at 20 rows) or one batched matmul.
            for m in [2, 20, 300] {
                let x = Tensor::from_vec(values(m * g * k, m), (m, g * k), &Device::Cpu).unwrap();
                let got = grouped.forward(&x).unwrap();
                let want = reference(&held, &x);
                let diff = max_abs_diff(&got, &want);
                let bound = if format.quantize == Quantization::None {
                    1e-4
                } else {
                    0.15
                };
                assert!(diff < bound, "{format:?}, {m} rows: {diff}");
            }
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

    /// Packing rows on several threads (parts of 112, 112 and 80 rows)
    /// gives the weight packed whole; a shape that does not tile is left
    /// to candle.
    #[test]
    fn split_packing_equals_packing_whole() {
        let (n, k) = (304, 512);
        assert!(n * k >= QUANTIZE_SPLIT);
        let v = values(n * k, 9);
        for ggml in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let Some(ours) = pack_rows(&v, (n, k), ggml, 3).unwrap() else {
                assert!(!Packed::available());
                continue;
            };
            let whole =
                QTensor::quantize(&Tensor::from_slice(&v, (n, k), &Device::Cpu).unwrap(), ggml)
                    .unwrap();
            let whole = Packed::new(&whole.data().unwrap(), ggml, n, k).unwrap();
            assert_eq!(ours.dims(), (n, k));
            assert_eq!(ours.dequantize(), whole.dequantize(), "{ggml:?}");
        }
        assert!(pack_rows(&v[..40 * k], (40, k), GgmlDType::Q8_0, 3)
            .unwrap()
            .is_none());
    }

    /// Quantizing rows on several threads gives candle's bytes exactly.
    #[test]
    fn split_quantization_equals_candles() {
        let (n, k) = (301, 256);
        assert!(n * k >= QUANTIZE_SPLIT);
        let v = values(n * k, 7);
        for ggml in [GgmlDType::Q8_0, GgmlDType::Q4K] {
            let ours = quantize_rows(&v, (n, k), ggml, 3).unwrap();
            let whole =
                QTensor::quantize(&Tensor::from_slice(&v, (n, k), &Device::Cpu).unwrap(), ggml)
                    .unwrap();
            assert_eq!(ours.shape().dims2().unwrap(), (n, k));
            assert!(ours.data().unwrap() == whole.data().unwrap(), "{ggml:?}");
        }
    }
}
