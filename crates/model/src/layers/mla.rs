//! Multi-head Latent Attention (DeepSeek-V2 paper, §2.1), mirroring the
//! checkpoint's `self_attn` module.
//!
//! Per token: `q` from `q_proj` or `q_b_proj(q_a_layernorm(q_a_proj(x)))`, split per
//! head into a no-rope and a rope part; `kv_a_proj_with_mqa` gives the latent
//! `c_kv` (normalised by `kv_a_layernorm`) and one rope key shared by all heads.
//! Only `[c_kv | rotated k_pe]` is written to the cache. Attention then runs, per
//! sequence, in one of two forms that give the same numbers:
//!
//! * **absorbed** (always used for decode): `kv_b_proj`'s key slice is folded into
//!   the query and its value slice applied after attention, so per-head K and V
//!   are never materialised; or
//! * **expanded** (prompts, where [`expanded_pays`]): per-head K and V are rebuilt
//!   from the cached latents through `kv_b_proj`, as the reference implementation
//!   does, and attended with matrix products ([`expanded_attention`]).

use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{with_f32, GroupedLinear, Linear, WeightFormat};
use super::norm::RmsNorm;
use super::rope::Rope;
use crate::cache::LayerRows;
use crate::config::DeepSeekConfig;
use crate::kernels::attention::{
    absorbed_attention, expanded_attention, expanded_pays, fused_absorbed_attention, fused_pays,
    phased_absorbed_attention, phases_fit, HeadMatrices, Latent, LatentShape, SeqSpan,
    UpProjection,
};
use crate::kernels::packed;

/// DeepSeek's inner norms use a fixed epsilon, whatever `rms_norm_eps` says.
const LORA_NORM_EPS: f64 = 1e-6;

/// How [`Attention::fused`] splits its work over the pool: work items of
/// head groups over every token ([`fused_absorbed_attention`], where
/// [`fused_pays`]), or phases ([`phased_absorbed_attention`], where
/// [`phases_fit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fusion {
    Heads,
    Phases,
}

/// How attention is computed from the latent cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionMode {
    /// Per sequence, the form that costs less ([`expanded_pays`]), where the
    /// activations are f32 (else absorbed).
    #[default]
    Auto,
    /// Every sequence in the absorbed form.
    Absorbed,
    /// Every sequence in the expanded form.
    Expanded,
}

/// What the expanded form's two products (the attention over a prompt's
/// rows) multiply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionDType {
    /// f32 numbers: the absorbed form's outputs, to rounding.
    #[default]
    F32,
    /// The queries, keys, weights and values rounded to bf16 and multiplied
    /// on Intel AMX tiles (sums in f32), where the CPU has AMX-BF16; f32
    /// elsewhere. About twice as fast on an 8k prompt, for about twice a
    /// bf16 cache's error (`crates/model/tests/parity.rs`).
    Bf16,
}

#[derive(Debug, Clone)]
pub enum QProj {
    Plain {
        q_proj: Linear,
    },
    LowRank {
        q_a_proj: Linear,
        q_a_layernorm: RmsNorm,
        q_b_proj: Linear,
    },
}

impl QProj {
    /// The queries and `kv_a`'s output: the projections that read `x` run
    /// in one [`Linear::forward_shared`].
    fn forward_with(&self, kv_a: &Linear, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let first = match self {
            QProj::Plain { q_proj } => q_proj,
            QProj::LowRank { q_a_proj, .. } => q_a_proj,
        };
        let mut both = Linear::forward_shared(&[first, kv_a], x)?;
        let kv = both.pop().expect("two outputs");
        let q = both.pop().expect("two outputs");
        let q = match self {
            QProj::Plain { .. } => q,
            QProj::LowRank {
                q_a_layernorm,
                q_b_proj,
                ..
            } => q_b_proj.forward(&q_a_layernorm.forward(&q)?)?,
        };
        Ok((q, kv))
    }
}

/// Everything a layer's attention needs to know about the batch; built once per
/// forward and shared by all layers.
pub struct BatchLayout<'a> {
    pub seqs: Vec<SeqSpan<'a>>,
    /// Per token: its absolute position and its cache slot.
    pub positions: Vec<usize>,
    pub slots: Vec<usize>,
    pub block_size: usize,
    pub device: Device,
}

#[derive(Debug, Clone)]
pub struct Attention {
    q: QProj,
    kv_a_proj_with_mqa: Linear,
    kv_a_layernorm: RmsNorm,
    /// `kv_b_proj`'s key slices, transposed: per head `[rank, nope]`, which
    /// maps a head's `q_nope` to its latent query (absorbed into queries).
    w_uk: GroupedLinear,
    /// `kv_b_proj`'s value slices: per head `[v_head_dim, rank]`, which maps
    /// a head's attended latent to its output.
    w_uv: GroupedLinear,
    o_proj: Linear,
    heads: usize,
    nope: usize,
    rope_dim: usize,
    rank: usize,
    v_dim: usize,
    scale: f32,
}

impl Attention {
    /// Weight bytes one decode step reads (every projection and the absorbed
    /// `kv_b_proj` slices; the norms' few floats are left out).
    pub fn decode_weight_bytes(&self) -> usize {
        let q = match &self.q {
            QProj::Plain { q_proj } => q_proj.weight_bytes(),
            QProj::LowRank {
                q_a_proj, q_b_proj, ..
            } => q_a_proj.weight_bytes() + q_b_proj.weight_bytes(),
        };
        q + self.kv_a_proj_with_mqa.weight_bytes()
            + self.w_uk.weight_bytes()
            + self.w_uv.weight_bytes()
            + self.o_proj.weight_bytes()
    }

    /// `vb` gives the compute dtype; the projections are held as `weights` says.
    pub fn new(cfg: &DeepSeekConfig, vb: VarBuilder, weights: WeightFormat) -> Result<Self> {
        let (h, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        let (nope, rope_dim, rank, v_dim) = (
            cfg.qk_nope_head_dim,
            cfg.qk_rope_head_dim,
            cfg.kv_lora_rank,
            cfg.v_head_dim,
        );
        let q_out = heads * cfg.qk_head_dim();
        let q = match cfg.q_lora_rank {
            None => QProj::Plain {
                q_proj: Linear::load(h, q_out, vb.pp("q_proj"), weights)?,
            },
            Some(r) => QProj::LowRank {
                q_a_proj: Linear::load(h, r, vb.pp("q_a_proj"), weights)?,
                q_a_layernorm: RmsNorm::new(r, LORA_NORM_EPS, vb.pp("q_a_layernorm"))?,
                q_b_proj: Linear::load(r, q_out, vb.pp("q_b_proj"), weights)?,
            },
        };
        // Built once here, then held (and quantized) like any projection;
        // a checkpoint that keeps them apart (a GGUF's `attn_k_b` and
        // `attn_v_b`) offers them as `w_uk` and `w_uv`, in these shapes.
        let (w_uk, w_uv) = if vb.contains_tensor("w_uk.weight") && vb.contains_tensor("w_uv.weight")
        {
            (
                GroupedLinear::load((heads, rank, nope), vb.pp("w_uk"), weights)?,
                GroupedLinear::load((heads, v_dim, rank), vb.pp("w_uv"), weights)?,
            )
        } else {
            let kv_b = vb
                .pp("kv_b_proj")
                .get((heads * (nope + v_dim), rank), "weight")?
                .reshape((heads, nope + v_dim, rank))?;
            (
                GroupedLinear::new(&kv_b.narrow(1, 0, nope)?.transpose(1, 2)?, weights)?,
                GroupedLinear::new(&kv_b.narrow(1, nope, v_dim)?, weights)?,
            )
        };
        Ok(Attention {
            q,
            kv_a_proj_with_mqa: Linear::load(
                h,
                rank + rope_dim,
                vb.pp("kv_a_proj_with_mqa"),
                weights,
            )?,
            kv_a_layernorm: RmsNorm::new(rank, LORA_NORM_EPS, vb.pp("kv_a_layernorm"))?,
            w_uk,
            w_uv,
            o_proj: Linear::load(heads * v_dim, h, vb.pp("o_proj"), weights)?,
            heads,
            nope,
            rope_dim,
            rank,
            v_dim,
            scale: cfg.softmax_scale() as f32,
        })
    }

    fn shape(&self, block_size: usize) -> LatentShape {
        LatentShape {
            heads: self.heads,
            rank: self.rank,
            width: self.rank + self.rope_dim,
            block_size,
        }
    }

    /// `x`: `[tokens, hidden]` (already normalised). Writes the new latents into
    /// `cache` (this layer's `[slots, width]` rows) and returns `[tokens, hidden]`.
    pub fn forward(
        &self,
        x: &Tensor,
        layout: &BatchLayout,
        rope: &Rope,
        cache: LayerRows,
        (mode, products): (AttentionMode, AttentionDType),
    ) -> Result<Tensor> {
        match cache {
            LayerRows::F32(cache) => self.forward_on(x, layout, rope, cache, (mode, products)),
            LayerRows::Bf16(cache) => self.forward_on(x, layout, rope, cache, (mode, products)),
            LayerRows::Fp8(cache) => self.forward_on(x, layout, rope, cache, (mode, products)),
        }
    }

    /// [`Self::forward`] on a cache of `E`s.
    fn forward_on<E: Latent>(
        &self,
        x: &Tensor,
        layout: &BatchLayout,
        rope: &Rope,
        cache: &mut [E],
        choice: (AttentionMode, AttentionDType),
    ) -> Result<Tensor> {
        let tokens = x.dim(0)?;
        let width = self.rank + self.rope_dim;
        let dtype = x.dtype();

        // New cache rows: [normalised c_kv | rotated k_pe].
        let (q, kv) = self.q.forward_with(&self.kv_a_proj_with_mqa, x)?;
        let c_kv = self.kv_a_layernorm.forward(&kv.narrow(1, 0, self.rank)?)?;
        let mut rows = Tensor::cat(&[&c_kv, &kv.narrow(1, self.rank, self.rope_dim)?], 1)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (t, row) in rows.chunks_exact_mut(width).enumerate() {
            rope.rotate(&mut row[self.rank..], layout.positions[t]);
            let dst = &mut cache[layout.slots[t] * width..][..width];
            for (d, v) in dst.iter_mut().zip(row.iter()) {
                *d = E::from_f32(*v);
            }
        }

        let q = q.reshape((tokens, self.heads, self.nope + self.rope_dim))?;
        // Rotated rope part of the queries, `[tokens, heads, rope]`, on the host.
        let mut q_pe = q
            .narrow(2, self.nope, self.rope_dim)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for (i, v) in q_pe.chunks_exact_mut(self.rope_dim).enumerate() {
            rope.rotate(v, layout.positions[i / self.heads]);
        }
        // `[tokens, heads, nope]`.
        let q_nope = q.narrow(2, 0, self.nope)?.contiguous()?;

        // `[tokens, heads * v_head_dim]`.
        let out = self.attend(&q_nope, &q_pe, layout, cache, tokens, dtype, choice)?;
        self.o_proj.forward(&out)
    }

    /// Each sequence's attention in the form `mode` gives it. `q_nope`:
    /// `[tokens, heads, nope]`. Returns `[tokens, heads * v_head_dim]`.
    #[allow(clippy::too_many_arguments)]
    fn attend<E: Latent>(
        &self,
        q_nope: &Tensor,
        q_pe: &[f32],
        layout: &BatchLayout,
        cache: &[E],
        tokens: usize,
        dtype: DType,
        (mode, products): (AttentionMode, AttentionDType),
    ) -> Result<Tensor> {
        let shape = self.shape(layout.block_size);
        // The expanded kernel computes in f32; with narrower activations
        // (`--dtype bf16` or `f16`) the choice keeps their absorbed path, as
        // the fused kernels do.
        let f32_compute = q_nope.dtype() == DType::F32;
        let expanded: Vec<bool> = layout
            .seqs
            .iter()
            .map(|s| match mode {
                AttentionMode::Absorbed => false,
                AttentionMode::Expanded => true,
                AttentionMode::Auto => {
                    f32_compute
                        && expanded_pays(s.num_new, s.num_cached, shape, self.nope, self.v_dim)
                }
            })
            .collect();
        if !expanded.contains(&true) {
            return self.absorbed(q_nope, q_pe, layout, cache, tokens, dtype);
        }
        let row = self.heads * self.v_dim;
        let (qn, qp) = (self.heads * self.nope, self.heads * self.rope_dim);
        let mut out = vec![0f32; tokens * row];
        let host = |t: Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
        let (uk, uv) = (self.w_uk.dense_f32()?, self.w_uv.dense_f32()?);
        let up = UpProjection {
            uk: &uk,
            uv: &uv,
            nope: self.nope,
            v_dim: self.v_dim,
        };
        let q_all = host(q_nope.clone())?;
        // The others, in the absorbed form as a batch of their own: their
        // rows of the queries, and spans renumbered to match.
        let (mut rest, mut rest_rows, mut rest_pe) = (vec![], vec![], vec![]);
        for (span, &expanded) in layout.seqs.iter().zip(&expanded) {
            let rows = span.start..span.start + span.num_new;
            if expanded {
                expanded_attention(
                    &q_all[rows.start * qn..rows.end * qn],
                    &q_pe[rows.start * qp..rows.end * qp],
                    cache,
                    span,
                    shape,
                    self.scale,
                    &up,
                    products == AttentionDType::Bf16,
                    &mut out[rows.start * row..rows.end * row],
                );
            } else {
                rest.push(SeqSpan {
                    start: rest_rows.len(),
                    ..*span
                });
                rest_pe.extend_from_slice(&q_pe[rows.start * qp..rows.end * qp]);
                rest_rows.extend(rows.map(|t| t as u32));
            }
        }
        if !rest.is_empty() {
            let sub = BatchLayout {
                seqs: rest,
                positions: vec![],
                slots: vec![],
                block_size: layout.block_size,
                device: layout.device.clone(),
            };
            let picked = Tensor::new(rest_rows.as_slice(), q_nope.device())?;
            let q_rest = q_nope.index_select(&picked, 0)?;
            let o = self.absorbed(&q_rest, &rest_pe, &sub, cache, rest_rows.len(), dtype)?;
            for (o, &t) in host(o)?.chunks_exact(row).zip(&rest_rows) {
                out[t as usize * row..][..row].copy_from_slice(o);
            }
        }
        Tensor::from_vec(out, (tokens, row), &layout.device)?.to_dtype(dtype)
    }

    /// `q_nope`: `[tokens, heads, nope]`. Returns `[tokens, heads * v_head_dim]`.
    fn absorbed<E: Latent>(
        &self,
        q_nope: &Tensor,
        q_pe: &[f32],
        layout: &BatchLayout,
        cache: &[E],
        tokens: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let shape = self.shape(layout.block_size);
        let longest = layout.seqs.iter().map(|s| s.num_cached + s.num_new).max();
        let fusion = if fused_pays(self.heads, tokens, longest.unwrap_or(0)) {
            Some(Fusion::Heads)
        } else if phases_fit(self.heads) {
            Some(Fusion::Phases)
        } else {
            None
        };
        if let Some(fusion) = fusion {
            if let Some(out) = self.fused(q_nope, q_pe, layout, cache, shape, fusion)? {
                let dims = (tokens, self.heads * self.v_dim);
                return Tensor::from_vec(out, dims, &layout.device);
            }
        }
        self.unfused(q_nope, q_pe, layout, cache, tokens, dtype)
    }

    /// [`Self::absorbed`] a step at a time: each per-head matrix in a call
    /// of its own, around [`absorbed_attention`].
    fn unfused<E: Latent>(
        &self,
        q_nope: &Tensor,
        q_pe: &[f32],
        layout: &BatchLayout,
        cache: &[E],
        tokens: usize,
        dtype: DType,
    ) -> Result<Tensor> {
        let width = self.rank + self.rope_dim;
        let shape = self.shape(layout.block_size);
        // q_lat = W_UKᵀ q_nope per head: `[tokens, heads * rank]`.
        let q_lat = self
            .w_uk
            .forward(&q_nope.reshape((tokens, self.heads * self.nope))?)?
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let mut queries = vec![0f32; tokens * self.heads * width];
        for ((dst, lat), pe) in queries
            .chunks_exact_mut(width)
            .zip(q_lat.chunks_exact(self.rank))
            .zip(q_pe.chunks_exact(self.rope_dim))
        {
            dst[..self.rank].copy_from_slice(lat);
            dst[self.rank..].copy_from_slice(pe);
        }
        let latent = absorbed_attention(&queries, cache, &layout.seqs, shape, self.scale);
        let latent = Tensor::from_vec(latent, (tokens, self.heads * self.rank), &layout.device)?
            .to_dtype(dtype)?;
        self.w_uv.forward(&latent)
    }

    /// [`Self::absorbed`] in one parallel region, split as `fusion` says,
    /// where the per-head matrices are repacked for the VNNI kernels and
    /// the activations are f32; `None` elsewhere. The numbers are the same
    /// as the unfused path's.
    fn fused<E: Latent>(
        &self,
        q_nope: &Tensor,
        q_pe: &[f32],
        layout: &BatchLayout,
        cache: &[E],
        shape: LatentShape,
        fusion: Fusion,
    ) -> Result<Option<Vec<f32>>> {
        let (Some(uk), Some(uv)) = (self.w_uk.packs(), self.w_uv.packs()) else {
            return Ok(None);
        };
        if q_nope.dtype() != DType::F32 {
            return Ok(None);
        }
        let matrices = HeadMatrices {
            nope: self.nope,
            v_dim: self.v_dim,
            uk: |h: usize, x: &[f32], out: &mut [f32]| packed::matmul_here(x, &uk[h], out),
            uv: |h: usize, x: &[f32], out: &mut [f32]| packed::matmul_here(x, &uv[h], out),
        };
        let run = match fusion {
            Fusion::Heads => fused_absorbed_attention,
            Fusion::Phases => phased_absorbed_attention,
        };
        let (seqs, scale) = (&layout.seqs, self.scale);
        let out = with_f32(q_nope, |q_nope| {
            run(q_nope, q_pe, cache, seqs, shape, scale, &matrices)
        })?;
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::quant::Quantization;

    /// A deterministic pseudo-random fill in [-0.5, 0.5).
    fn fill(n: usize, seed: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 2_654_435_761 + seed * 40_503) % 1000) as f32 / 1000.0 - 0.5)
            .collect()
    }

    /// With the per-head matrices repacked (Q8_0 on a CPU with
    /// AVX-512-VNNI), the fused attention gives the unfused path's numbers
    /// exactly: sequences mid-decode and a prompt longer than a fused
    /// item's token chunk, blocks in a scrambled order. Eight heads keep
    /// the items of both paths under sixteen heads, so that both run the
    /// same scores kernel: with sixteen, the unfused items would hold all of
    /// them and take the head-major kernel on AVX-512, which sums each score
    /// in another order, and `W_UV`'s rounding of its input to 8 bits
    /// turns such last-bit differences into larger ones. The kernels'
    /// own test (`fused_equals_the_steps_one_after_another`) checks that
    /// case on f32 matrices.
    #[test]
    fn fused_attention_equals_the_unfused_steps() {
        let (hidden, heads, nope, rope_dim, rank, v_dim) = (64, 8, 32, 16, 64, 32);
        let cfg = DeepSeekConfig::from_json(
            &serde_json::json!({
                "model_type": "deepseek_v2", "vocab_size": 32, "hidden_size": hidden,
                "intermediate_size": 64,
                "num_hidden_layers": 1, "num_attention_heads": heads,
                "kv_lora_rank": rank, "qk_nope_head_dim": nope,
                "qk_rope_head_dim": rope_dim, "v_head_dim": v_dim, "q_lora_rank": null,
                "rope_theta": 10000.0, "rms_norm_eps": 1e-6, "max_position_embeddings": 512
            })
            .to_string(),
        )
        .unwrap();
        let dev = Device::Cpu;
        let tensor = |shape: &[usize], seed| {
            let n = shape.iter().product();
            Tensor::from_vec(fill(n, seed), shape, &dev).unwrap()
        };
        let weights: HashMap<String, Tensor> = [
            ("q_proj.weight", vec![heads * (nope + rope_dim), hidden]),
            ("kv_a_proj_with_mqa.weight", vec![rank + rope_dim, hidden]),
            ("kv_a_layernorm.weight", vec![rank]),
            ("kv_b_proj.weight", vec![heads * (nope + v_dim), rank]),
            ("o_proj.weight", vec![hidden, heads * v_dim]),
        ]
        .into_iter()
        .enumerate()
        .map(|(i, (name, shape))| (name.to_string(), tensor(&shape, i + 1)))
        .collect();
        let vb = VarBuilder::from_tensors(weights, DType::F32, &dev);
        let format = WeightFormat {
            dtype: DType::F32,
            quantize: Quantization::Q8_0,
        };
        let attention = Attention::new(&cfg, vb, format).unwrap();

        let (block_size, blocks) = (16, 12);
        let width = rank + rope_dim;
        let cache = fill(blocks * block_size * width, 9);
        let table: Vec<u32> = (0..blocks as u32).map(|b| b * 5 % blocks as u32).collect();
        let span = |start, num_new, num_cached, first: usize| SeqSpan {
            start,
            num_new,
            num_cached,
            block_table: &table[first..],
        };
        let seqs = vec![span(0, 1, 40, 0), span(1, 3, 20, 4), span(4, 35, 0, 6)];
        let tokens = 39;
        let layout = BatchLayout {
            seqs,
            positions: vec![],
            slots: vec![],
            block_size,
            device: dev.clone(),
        };
        let q_nope = tensor(&[tokens, heads, nope], 11);
        let q_pe = fill(tokens * heads * rope_dim, 12);
        let shape = attention.shape(block_size);
        let unfused: Vec<f32> = attention
            .unfused(&q_nope, &q_pe, &layout, &cache, tokens, DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for fusion in [Fusion::Heads, Fusion::Phases] {
            let fused = attention
                .fused(&q_nope, &q_pe, &layout, &cache, shape, fusion)
                .unwrap();
            let Some(fused) = fused else {
                // Not repacked (no AVX-512-VNNI): the unfused path is the only one.
                assert!(attention.w_uk.packs().is_none());
                return;
            };
            assert_eq!(fused.len(), unfused.len());
            for (i, (a, b)) in fused.iter().zip(&unfused).enumerate() {
                assert!(a == b, "{fusion:?}, number {i}: fused {a}, unfused {b}");
            }
        }
    }
}
