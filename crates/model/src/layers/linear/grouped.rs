//! [`GroupedLinear`]: independent linear maps over consecutive slices of
//! the input, such as MLA's per-head pieces of `kv_b_proj`.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::{in_place, stored_blocks, with_f32, Linear, Weight, WeightFormat};
use crate::kernels::gemv::blocked_kernel;
use crate::kernels::packed::{self, Packed};
use crate::kernels::parallel::{self, Disjoint};
use crate::quant::Quantization;

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

    /// The `[groups, n, k]` weight `vb` names `weight`, held as [`Self::new`]
    /// holds it, except where the checkpoint stores it as blocks of a
    /// format the packed kernels run ([`super::STORED_BLOCKS`]; a GGUF's
    /// `attn_k_b` and `attn_v_b`, MLA's per-head matrices) and the CPU runs
    /// them: then each group's blocks are repacked as they are, not decoded
    /// and rounded again.
    pub fn load(
        (groups, n, k): (usize, usize, usize),
        vb: VarBuilder,
        format: WeightFormat,
    ) -> Result<Self> {
        if format.quantize.ggml_for(k).is_some() {
            if let Some((ggml, blocks)) = stored_blocks(&vb)? {
                let row_bytes = k / ggml.block_size() * ggml.type_size();
                if blocks.dims() != [groups * n, row_bytes] {
                    candle_core::bail!(
                        "{ggml:?} blocks of shape {:?}, expected [{}, {row_bytes}]",
                        blocks.dims(),
                        groups * n
                    );
                }
                let group = n * row_bytes;
                let packs = in_place(&blocks, |bytes: &[u8]| {
                    bytes
                        .chunks_exact(group)
                        .map(|blocks| Packed::new(blocks, ggml, n, k))
                        .collect::<Option<Vec<Packed>>>()
                })?;
                if let Some(packs) = packs {
                    return Ok(GroupedLinear {
                        held: Held::Packed(packs),
                        groups,
                        n,
                        k,
                    });
                }
            }
        }
        Self::new(
            &vb.set_dtype(DType::F32).get((groups, n, k), "weight")?,
            format,
        )
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

    /// [`Self::dense`] in f32 on the host, `[groups, n, k]` row-major;
    /// repacked groups are dequantized in parallel, a group per task (the
    /// expanded attention's per-call copy of `kv_b_proj`).
    pub fn dense_f32(&self) -> Result<Vec<f32>> {
        let Held::Packed(packs) = &self.held else {
            return self.dense(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        };
        let size = self.n * self.k;
        let mut out = vec![0f32; self.groups * size];
        let dst = Disjoint::new(&mut out);
        parallel::for_ranges(packs.len(), |gs| {
            for g in gs {
                // SAFETY: group `g`'s numbers are this task's alone.
                let numbers = unsafe { dst.slice(g * size..(g + 1) * size) };
                numbers.copy_from_slice(&packs[g].dequantize());
            }
        });
        Ok(out)
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
    use crate::testing::unit::{max_abs_diff, values};
    use candle_core::Device;

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
}
