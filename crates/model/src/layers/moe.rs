//! The feed-forward blocks: the dense `Mlp` and DeepSeekMoE (DeepSeek-V2 paper
//! §2.2; DeepSeek-V3 report §2.1.2 for sigmoid scores and the auxiliary-loss-free
//! bias), mirroring the checkpoint's `mlp`, `mlp.gate`, `mlp.experts.E` and
//! `mlp.shared_experts` modules.
//!
//! Routing is computed on the host once per layer and step for the whole batch;
//! dispatch then groups the (token, expert) pairs by expert, runs each active
//! expert once on its gathered rows (experts that every token picked, and the
//! shared experts, read the input in place and project it in one call), and
//! adds every weighted output back to its token's row in one pass. Experts
//! without tokens cost nothing. With the packed kernels (quantized weights
//! on AVX-512-VNNI CPUs) every active expert runs on its own rows in one
//! call for all their gate and up projections and one for their down
//! projections, whatever the batch.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::linear::{with_f32, Linear, WeightFormat};
use crate::config::{Arch, MoeConfig, ScoringFunc, TopkMethod};
use crate::kernels::experts::PackedMlp;
use crate::kernels::parallel;
use crate::kernels::silu::silu_times_tensor;

/// `down_proj(silu(gate_proj(x)) * up_proj(x))`.
#[derive(Debug, Clone)]
pub struct Mlp {
    held: MlpWeights,
}

#[derive(Debug, Clone)]
enum MlpWeights {
    Linears {
        gate_proj: Linear,
        up_proj: Linear,
        down_proj: Linear,
    },
    Packed(PackedMlp),
}

impl Mlp {
    pub fn weight_bytes(&self) -> usize {
        match &self.held {
            MlpWeights::Linears {
                gate_proj,
                up_proj,
                down_proj,
            } => gate_proj.weight_bytes() + up_proj.weight_bytes() + down_proj.weight_bytes(),
            MlpWeights::Packed(packed) => packed.bytes(),
        }
    }

    /// Quantized weights on a CPU with AVX-512-VNNI are repacked for the
    /// packed kernels ([`Packed`](crate::kernels::packed::Packed)), which
    /// then run the MLP at every batch size, each projection in the format
    /// it is held in.
    pub fn new(
        hidden: usize,
        intermediate: usize,
        vb: VarBuilder,
        weights: WeightFormat,
    ) -> Result<Self> {
        let gate_proj = Linear::load(hidden, intermediate, vb.pp("gate_proj"), weights)?;
        let up_proj = Linear::load(hidden, intermediate, vb.pp("up_proj"), weights)?;
        let down_proj = Linear::load(intermediate, hidden, vb.pp("down_proj"), weights)?;
        let packed = [&gate_proj, &up_proj, &down_proj]
            .iter()
            .all(|l| l.is_packed());
        let held = if packed {
            let [gate, up, down] =
                [gate_proj, up_proj, down_proj].map(|l| l.into_packed().expect("packed"));
            MlpWeights::Packed(PackedMlp { gate, up, down })
        } else {
            MlpWeights::Linears {
                gate_proj,
                up_proj,
                down_proj,
            }
        };
        Ok(Mlp { held })
    }

    pub(crate) fn packed(&self) -> Option<&PackedMlp> {
        match &self.held {
            MlpWeights::Packed(packed) => Some(packed),
            MlpWeights::Linears { .. } => None,
        }
    }

    /// Each of `mlps` applied to the same `x`: the gate and up projections
    /// of those held as linears all run in one [`Linear::forward_shared`];
    /// a packed one among them (a layer whose weights are not all in
    /// formats or shapes the packed kernels take) runs on its own.
    pub(crate) fn forward_shared(mlps: &[&Mlp], x: &Tensor) -> Result<Vec<Tensor>> {
        let mut linears = Vec::with_capacity(2 * mlps.len());
        let mut downs = Vec::with_capacity(mlps.len());
        for mlp in mlps {
            if let MlpWeights::Linears {
                gate_proj,
                up_proj,
                down_proj,
            } = &mlp.held
            {
                linears.extend([gate_proj, up_proj]);
                downs.push(down_proj);
            }
        }
        let projected = Linear::forward_shared(&linears, x)?;
        let hidden = projected
            .chunks_exact(2)
            .map(|gate_up| silu_times_tensor(&gate_up[0], &gate_up[1]))
            .collect::<Result<Vec<_>>>()?;
        let mut held = Linear::forward_each(&downs, &hidden)?.into_iter();
        mlps.iter()
            .map(|mlp| match &mlp.held {
                MlpWeights::Linears { .. } => Ok(held.next().expect("one output per linear MLP")),
                MlpWeights::Packed(_) => mlp.forward(x),
            })
            .collect()
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(packed) = self.packed() {
            let (tokens, hidden) = x.dims2()?;
            let rows: Vec<u32> = (0..tokens as u32).collect();
            let out = with_f32(x, |xs| {
                PackedMlp::forward_each(xs, hidden, &[(packed, &rows)])
            })?;
            return Tensor::from_vec(out, (tokens, hidden), x.device())?.to_dtype(x.dtype());
        }
        let mut out = Self::forward_shared(&[self], x)?;
        Ok(out.pop().expect("one output per MLP"))
    }
}

/// The router. Its weight and bias stay in f32 whatever the model dtype, as the
/// reference keeps them.
#[derive(Debug, Clone)]
pub struct MoeGate {
    /// `[n_routed_experts, hidden]`, f32: decode steps run it through our
    /// kernel, like every other small-batch matmul.
    weight: Linear,
    e_score_correction_bias: Option<Vec<f32>>,
    cfg: MoeConfig,
    arch: Arch,
}

/// The experts chosen for each token, with their weights, `top_k` per token.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub experts: Vec<usize>,
    pub weights: Vec<f32>,
}

fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    // Stable sort by descending value: ties go to the lower index.
    idx.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    idx.truncate(k);
    idx
}

impl MoeGate {
    pub fn new(hidden: usize, cfg: &MoeConfig, arch: Arch, vb: VarBuilder) -> Result<Self> {
        let vb = vb.set_dtype(DType::F32);
        let e = cfg.n_routed_experts;
        let bias = if cfg.topk_method == TopkMethod::NoauxTc {
            Some(vb.get(e, "e_score_correction_bias")?.to_vec1::<f32>()?)
        } else {
            None
        };
        Ok(MoeGate {
            weight: Linear::from_weight(vb.get((e, hidden), "weight")?),
            e_score_correction_bias: bias,
            cfg: cfg.clone(),
            arch,
        })
    }

    /// Routes every row of `x` (`[tokens, hidden]`).
    pub fn route(&self, x: &Tensor) -> Result<Routing> {
        let logits = self
            .weight
            .forward(&x.to_dtype(DType::F32)?)?
            .to_vec2::<f32>()?;
        let k = self.cfg.num_experts_per_tok;
        let mut routing = Routing {
            top_k: k,
            experts: Vec::with_capacity(logits.len() * k),
            weights: Vec::with_capacity(logits.len() * k),
        };
        for row in &logits {
            self.route_row(row, &mut routing);
        }
        Ok(routing)
    }

    fn route_row(&self, logits: &[f32], out: &mut Routing) {
        let cfg = &self.cfg;
        let scores: Vec<f32> = match cfg.scoring_func {
            ScoringFunc::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                exp.iter().map(|e| e / sum).collect()
            }
            ScoringFunc::Sigmoid => logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect(),
        };
        let mut choice = match &self.e_score_correction_bias {
            Some(bias) => scores.iter().zip(bias).map(|(s, b)| s + b).collect(),
            None => scores.clone(),
        };
        if cfg.topk_method != TopkMethod::Greedy && cfg.n_group > 1 {
            let per_group = cfg.n_routed_experts / cfg.n_group;
            let group_scores: Vec<f32> = choice
                .chunks_exact(per_group)
                .map(|g| match cfg.topk_method {
                    TopkMethod::NoauxTc => top_indices(g, 2).iter().map(|&i| g[i]).sum(),
                    _ => g.iter().copied().fold(f32::NEG_INFINITY, f32::max),
                })
                .collect();
            let kept = top_indices(&group_scores, cfg.topk_group);
            for (g, chunk) in choice.chunks_exact_mut(per_group).enumerate() {
                if !kept.contains(&g) {
                    chunk.fill(f32::NEG_INFINITY);
                }
            }
        }
        let chosen = top_indices(&choice, cfg.num_experts_per_tok);
        let mut weights: Vec<f32> = chosen.iter().map(|&e| scores[e]).collect();
        let normalise = cfg.num_experts_per_tok > 1 && cfg.norm_topk_prob;
        if normalise {
            let sum = weights.iter().sum::<f32>() + 1e-20;
            weights.iter_mut().for_each(|w| *w /= sum);
        }
        // DeepSeek-V2 scales only unnormalised weights; V3 always scales.
        if !normalise || self.arch == Arch::V3 {
            let factor = cfg.routed_scaling_factor as f32;
            weights.iter_mut().for_each(|w| *w *= factor);
        }
        out.experts.extend(chosen);
        out.weights.extend(weights);
    }
}

/// Routed experts plus the shared experts (one MLP `n_shared_experts` wide).
#[derive(Debug, Clone)]
pub struct Moe {
    gate: MoeGate,
    experts: Vec<Mlp>,
    shared_experts: Option<Mlp>,
}

impl Moe {
    /// Weight bytes one token's decode reads: the router, the shared experts
    /// and `num_experts_per_tok` routed experts (all experts are the same size).
    pub fn decode_weight_bytes(&self) -> usize {
        let expert = self.experts.first().map_or(0, Mlp::weight_bytes);
        self.gate.weight.weight_bytes()
            + self.shared_experts.as_ref().map_or(0, Mlp::weight_bytes)
            + self.gate.cfg.num_experts_per_tok * expert
    }

    /// `vb` gives the compute dtype (the router runs in f32 regardless); the
    /// experts are kept in `weights`.
    pub fn new(
        hidden: usize,
        cfg: &MoeConfig,
        arch: Arch,
        vb: VarBuilder,
        weights: WeightFormat,
    ) -> Result<Self> {
        let inter = cfg.moe_intermediate_size;
        // Expert by expert on threads of their own (on the CPU): each
        // expert's weights are many small copies and repackings, too small
        // to split well.
        let on_cpu = vb.device().is_cpu();
        let experts = parallel::map_on_threads(on_cpu, cfg.n_routed_experts, |e| {
            Mlp::new(hidden, inter, vb.pp("experts").pp(e), weights)
        })?;
        let shared_experts = match cfg.n_shared_experts {
            0 => None,
            n => Some(Mlp::new(
                hidden,
                inter * n,
                vb.pp("shared_experts"),
                weights,
            )?),
        };
        Ok(Moe {
            gate: MoeGate::new(hidden, cfg, arch, vb.pp("gate"))?,
            experts,
            shared_experts,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let routing = self.gate.route(x)?;
        let tokens = x.dim(0)?;
        let device = x.device();
        // Group (row, weight) pairs by expert, rows ascending.
        let mut per_expert: Vec<Vec<(u32, f32)>> = vec![Vec::new(); self.experts.len()];
        for (i, (&e, &w)) in routing.experts.iter().zip(&routing.weights).enumerate() {
            per_expert[e].push(((i / routing.top_k) as u32, w));
        }
        let packed: Option<Vec<&PackedMlp>> = self.experts.iter().map(Mlp::packed).collect();
        let shared_packed = self.shared_experts.as_ref().map(Mlp::packed);
        if let (Some(packed), None | Some(Some(_))) = (packed, shared_packed) {
            return Self::forward_packed(&packed, shared_packed.flatten(), &per_expert, x);
        }
        // Per expert, its output rows. Experts that take every row (all of
        // them at batch 1) share their input with the shared experts: all
        // their gate and up projections run in one call.
        let mut outputs: Vec<Option<Tensor>> = vec![None; self.experts.len()];
        let mut full = Vec::new();
        for (e, pairs) in per_expert.iter().enumerate() {
            // A token picks an expert at most once, so an expert with one
            // pair per token takes every row, in order.
            if pairs.len() == tokens {
                full.push(e);
            } else if !pairs.is_empty() {
                let ids: Vec<u32> = pairs.iter().map(|p| p.0).collect();
                let rows = x.index_select(&Tensor::new(ids.as_slice(), device)?, 0)?;
                outputs[e] = Some(self.experts[e].forward(&rows)?);
            }
        }
        let mut mlps: Vec<&Mlp> = full.iter().map(|&e| &self.experts[e]).collect();
        mlps.extend(self.shared_experts.as_ref());
        let mut full_outputs = Mlp::forward_shared(&mlps, x)?;
        let shared = match self.shared_experts {
            Some(_) => full_outputs.pop(),
            None => None,
        };
        for (e, output) in full.into_iter().zip(full_outputs) {
            outputs[e] = Some(output);
        }
        let outputs: Vec<(Tensor, &Vec<(u32, f32)>)> = outputs
            .into_iter()
            .zip(&per_expert)
            .filter_map(|(o, pairs)| Some((o?, pairs)))
            .collect();
        let routed = if device.is_cpu() && x.dtype() == DType::F32 {
            Self::combine_on_host(&outputs, x.dims2()?)?
        } else {
            Self::combine(&outputs, x)?
        };
        match shared {
            Some(shared) => routed + shared,
            None => Ok(routed),
        }
    }

    /// [`Self::forward`] with every expert packed: each active expert on its
    /// own tokens and the shared experts on all of them, in two calls of
    /// the packed kernel ([`PackedMlp::forward_each`]), then the weighted
    /// sum on the host.
    fn forward_packed(
        experts: &[&PackedMlp],
        shared: Option<&PackedMlp>,
        per_expert: &[Vec<(u32, f32)>],
        x: &Tensor,
    ) -> Result<Tensor> {
        let (tokens, hidden) = x.dims2()?;
        let rows: Vec<Vec<u32>> = per_expert
            .iter()
            .map(|pairs| pairs.iter().map(|p| p.0).collect())
            .collect();
        let all: Vec<u32> = (0..tokens as u32).collect();
        let mut jobs: Vec<(&PackedMlp, &[u32])> = experts
            .iter()
            .zip(&rows)
            .filter(|(_, rows)| !rows.is_empty())
            .map(|(&mlp, rows)| (mlp, rows.as_slice()))
            .collect();
        jobs.extend(shared.map(|mlp| (mlp, all.as_slice())));
        let out = with_f32(x, |xs| PackedMlp::forward_each(xs, hidden, &jobs))?;
        let mut out_rows = out.chunks_exact(hidden);
        let mut sum = vec![0f32; tokens * hidden];
        for &(token, weight) in per_expert.iter().flatten() {
            let row = out_rows.next().expect("an output row per pair");
            let dst = &mut sum[token as usize * hidden..][..hidden];
            for (d, v) in dst.iter_mut().zip(row) {
                *d += weight * v;
            }
        }
        // The shared experts' rows come last, added after the routed sum.
        for (dst, row) in sum.chunks_exact_mut(hidden).zip(out_rows) {
            for (d, v) in dst.iter_mut().zip(row) {
                *d += v;
            }
        }
        Tensor::from_vec(sum, (tokens, hidden), x.device())?.to_dtype(x.dtype())
    }

    /// The routing-weighted sum of the experts' outputs (`(output, pairs)`,
    /// an output row per pair), scattered back to the tokens' rows: a few
    /// host loops instead of six tensor operations, which dominate a decode
    /// step's fixed cost.
    fn combine_on_host(
        outputs: &[(Tensor, &Vec<(u32, f32)>)],
        (tokens, hidden): (usize, usize),
    ) -> Result<Tensor> {
        let mut sum = vec![0f32; tokens * hidden];
        for (output, pairs) in outputs {
            let output = output.flatten_all()?.to_vec1::<f32>()?;
            for (row, &(token, weight)) in output.chunks_exact(hidden).zip(pairs.iter()) {
                let dst = &mut sum[token as usize * hidden..][..hidden];
                for (d, v) in dst.iter_mut().zip(row) {
                    *d += weight * v;
                }
            }
        }
        Tensor::from_vec(sum, (tokens, hidden), &candle_core::Device::Cpu)
    }

    /// [`Self::combine_on_host`] in tensor operations (other devices and
    /// dtypes), accumulating in `x`'s dtype as the reference does.
    fn combine(outputs: &[(Tensor, &Vec<(u32, f32)>)], x: &Tensor) -> Result<Tensor> {
        let device = x.device();
        let pairs = outputs.iter().flat_map(|(_, pairs)| pairs.iter());
        let rows: Vec<u32> = pairs.clone().map(|p| p.0).collect();
        let weights: Vec<f32> = pairs.map(|p| p.1).collect();
        let n = weights.len();
        let weights = Tensor::from_vec(weights, (n, 1), device)?;
        let outputs: Vec<&Tensor> = outputs.iter().map(|(o, _)| o).collect();
        let weighted = Tensor::cat(&outputs, 0)?
            .to_dtype(DType::F32)?
            .broadcast_mul(&weights)?
            .to_dtype(x.dtype())?;
        let rows = Tensor::from_vec(rows, n, device)?;
        x.zeros_like()?.index_add(&rows, &weighted, 0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::quantized::{GgmlDType, QTensor};
    use candle_core::Device;

    use super::*;
    use crate::kernels::packed::Packed;
    use crate::quant::Quantization;
    use crate::testing::unit::max_abs;
    use crate::testing::Xorshift;

    /// Q4_K's 256-weight blocks fit both widths.
    const HIDDEN: usize = 256;

    const INTER: usize = 256;
    const EXPERTS: usize = 8;

    fn config() -> MoeConfig {
        MoeConfig {
            n_routed_experts: EXPERTS,
            n_shared_experts: 1,
            num_experts_per_tok: 2,
            moe_intermediate_size: INTER,
            first_k_dense_replace: 0,
            moe_layer_freq: 1,
            routed_scaling_factor: 1.0,
            scoring_func: ScoringFunc::Softmax,
            topk_method: TopkMethod::Greedy,
            n_group: 1,
            topk_group: 1,
            norm_topk_prob: false,
        }
    }

    /// `len` numbers uniform in `[-scale, scale)`.
    fn uniform(len: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = Xorshift(0x9E37_79B9_7F4A_7C15 ^ seed);
        (0..len)
            .map(|_| (2.0 * rng.next_f32() - 1.0) * scale)
            .collect()
    }

    /// Every weight of a MoE block, the experts' rounded through `rounded`
    /// if given (the router's never is).
    fn weights(rounded: Option<GgmlDType>) -> HashMap<String, Tensor> {
        let cpu = Device::Cpu;
        let mut map = HashMap::new();
        let mut seed = 0;
        let mut add = |name: String, (n, k): (usize, usize), scale: f32| {
            seed += 1;
            let v = uniform(n * k, seed, scale);
            let mut t = Tensor::from_vec(v, (n, k), &cpu).unwrap();
            if let Some(ggml) = rounded.filter(|_| !name.starts_with("gate")) {
                t = QTensor::quantize(&t, ggml)
                    .unwrap()
                    .dequantize(&cpu)
                    .unwrap();
            }
            map.insert(name, t);
        };
        add("gate.weight".into(), (EXPERTS, HIDDEN), 0.2);
        let experts = (0..EXPERTS).map(|e| format!("experts.{e}"));
        for prefix in experts.chain(["shared_experts".to_string()]) {
            add(format!("{prefix}.gate_proj.weight"), (INTER, HIDDEN), 0.2);
            add(format!("{prefix}.up_proj.weight"), (INTER, HIDDEN), 0.2);
            add(format!("{prefix}.down_proj.weight"), (HIDDEN, INTER), 0.2);
        }
        map
    }

    fn moe(rounded: Option<GgmlDType>, format: WeightFormat) -> Moe {
        let vb = VarBuilder::from_tensors(weights(rounded), DType::F32, &Device::Cpu);
        Moe::new(HIDDEN, &config(), Arch::V2, vb, format).unwrap()
    }

    /// Quantized experts (packed for the VNNI kernels where the CPU has
    /// them, else candle's quantized matmul) give the output of f32 experts
    /// holding the same rounded numbers, up to the quantization of
    /// activations, whether every token shares the experts (one token) or
    /// each expert takes its own tokens.
    ///
    /// That quantization is coarser on candle's kernels: for Q4_K weights
    /// everywhere, and on x86 with AVX-VNNI for Q8_0 weights too (its
    /// repacked kernels), candle rounds activations to Q8_K, one scale per
    /// 256 numbers, where the packed kernels take one per 32. The experts'
    /// inner activations (`silu(gate) · up`) have heavy tails, so a
    /// 256-number block's scale is set by its largest outlier. Measured
    /// largest errors: 0.9-1.5% of the largest output on the packed
    /// kernels, 1.6-2.4% on candle's.
    #[test]
    fn quantized_experts_equal_their_rounded_weights() {
        for (quantize, ggml) in [
            (Quantization::Q8_0, GgmlDType::Q8_0),
            (Quantization::Q4K, GgmlDType::Q4K),
        ] {
            let format = WeightFormat {
                dtype: DType::F32,
                quantize,
            };
            let quantized = moe(None, format);
            let packed = quantized.experts.iter().all(|e| e.packed().is_some());
            assert_eq!(packed, Packed::available());
            let dense = moe(Some(ggml), WeightFormat::dense(DType::F32));
            let bound = if packed { 0.02 } else { 0.03 };
            agree(&quantized, &dense, ggml, bound);
        }
    }

    /// The largest difference of the outputs within `bound` times the
    /// largest output, for 1, 5 and 40 tokens.
    fn agree(quantized: &Moe, dense: &Moe, ggml: GgmlDType, bound: f32) {
        for tokens in [1, 5, 40] {
            let x = uniform(tokens * HIDDEN, 1000 + tokens as u64, 1.0);
            let x = Tensor::from_vec(x, (tokens, HIDDEN), &Device::Cpu).unwrap();
            let want = dense.forward(&x).unwrap();
            let got = quantized.forward(&x).unwrap();
            let scale = max_abs(&want);
            let diff = max_abs(&(&got - &want).unwrap());
            assert!(
                diff <= bound * scale,
                "{ggml:?}, {tokens} tokens: {diff} against outputs up to {scale}"
            );
        }
    }
}
