//! `config.json` of DeepSeek-V2/V3 checkpoints and of the relatives that reuse
//! V3's architecture: Moonlight (`deepseek_v3`), Kimi-K2 (`kimi_k2`) and
//! GLM-4.7-Flash (`glm4_moe_lite`, whose differences are in `config/glm.rs`).
//!
//! Two layouts exist in the wild and both are accepted: DeepSeek's own (top-level
//! `rope_theta` and `rope_scaling`, as on the hub) and the one `transformers` 5
//! writes (`rope_parameters`; its `head_dim` is the rope width, not the attention
//! head size, so it is never read). Where `transformers` and DeepSeek's code read a
//! field differently, this follows DeepSeek's code:
//!
//! * V2 `norm_topk_prob: true` normalises the top-k weights and skips
//!   `routed_scaling_factor` (transformers ignores the flag);
//! * `moe_layer_freq` is honoured (`layer % freq == 0`; transformers ignores it);
//! * a YaRN `rope_scaling` without `original_max_position_embeddings` uses 4096
//!   (DeepSeek's default; transformers falls back to `max_position_embeddings`),
//!   and the rotary `mscale` is `yarn_mscale(mscale) / yarn_mscale(mscale_all_dim)`
//!   with DeepSeek's defaults (1 and 0).
//!
//! Masked expert groups are filled with `-inf` before the final top-k, as
//! transformers and DeepSeek-V3's own inference code do (DeepSeek's hub remote code
//! fills 0.0; the two differ only when a bias-corrected score is negative).
//! Unsupported values are errors that name the field, never silent fallbacks.

use std::path::Path;

use candle_core::DType;
use serde::Deserialize;
use serde_json::Value;

use crate::error::{parse_json, read_json, ModelError, Result};

mod glm;

/// Which DeepSeek generation's routing rules apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    V2,
    V3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScoringFunc {
    Softmax,
    Sigmoid,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopkMethod {
    /// Plain top-k over all experts.
    Greedy,
    /// Groups ranked by their best expert score; keep `topk_group` groups.
    GroupLimitedGreedy,
    /// Bias-corrected selection; groups ranked by the sum of their top-2.
    NoauxTc,
}

/// YaRN rope scaling (the only scaling DeepSeek checkpoints use).
#[derive(Debug, Clone, PartialEq)]
pub struct Yarn {
    pub factor: f64,
    pub original_max_position_embeddings: usize,
    pub beta_fast: f64,
    pub beta_slow: f64,
    pub mscale: f64,
    pub mscale_all_dim: f64,
}

/// Block-scaled FP8 weights (DeepSeek-V3/R1 release format).
#[derive(Debug, Clone, PartialEq)]
pub struct Fp8BlockQuant {
    pub block_size: [usize; 2],
}

/// The experts part of a config; absent for a dense model.
#[derive(Debug, Clone, PartialEq)]
pub struct MoeConfig {
    pub n_routed_experts: usize,
    pub n_shared_experts: usize,
    pub num_experts_per_tok: usize,
    pub moe_intermediate_size: usize,
    pub first_k_dense_replace: usize,
    pub moe_layer_freq: usize,
    pub routed_scaling_factor: f64,
    pub scoring_func: ScoringFunc,
    pub topk_method: TopkMethod,
    pub n_group: usize,
    pub topk_group: usize,
    pub norm_topk_prob: bool,
}

/// A validated DeepSeek-V2/V3 model configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepSeekConfig {
    pub arch: Arch,
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    pub moe: Option<MoeConfig>,
    pub rope_theta: f64,
    pub yarn: Option<Yarn>,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// The checkpoint's own dtype (`torch_dtype` / `dtype`), if stated.
    pub torch_dtype: Option<DType>,
    pub fp8: Option<Fp8BlockQuant>,
}

/// Field-for-field image of the JSON; everything optional so that the
/// validation below can name what is missing.
#[derive(Debug, Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    moe_intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    n_shared_experts: Option<usize>,
    n_routed_experts: Option<usize>,
    routed_scaling_factor: Option<f64>,
    topk_method: Option<String>,
    num_experts_per_tok: Option<usize>,
    moe_layer_freq: Option<usize>,
    first_k_dense_replace: Option<usize>,
    norm_topk_prob: Option<bool>,
    scoring_func: Option<String>,
    hidden_act: Option<String>,
    max_position_embeddings: Option<usize>,
    rms_norm_eps: Option<f64>,
    tie_word_embeddings: Option<bool>,
    rope_theta: Option<f64>,
    rope_scaling: Option<Value>,
    rope_parameters: Option<Value>,
    attention_bias: Option<bool>,
    q_lora_rank: Option<usize>,
    kv_lora_rank: Option<usize>,
    qk_nope_head_dim: Option<usize>,
    qk_rope_head_dim: Option<usize>,
    v_head_dim: Option<usize>,
    n_group: Option<usize>,
    topk_group: Option<usize>,
    bos_token_id: Option<Value>,
    eos_token_id: Option<Value>,
    torch_dtype: Option<String>,
    dtype: Option<String>,
    quantization_config: Option<Value>,
    /// `glm4_moe_lite`: `"dense"` or `"sparse"` per layer.
    mlp_layer_types: Option<Vec<String>>,
    partial_rotary_factor: Option<f64>,
    /// transformers' DeepSeek-V3 and GLM classes; `false` rotates halves.
    rope_interleave: Option<bool>,
}

fn required<T>(value: Option<T>, field: &str) -> Result<T> {
    value.ok_or_else(|| ModelError::config(field, "is missing"))
}

fn positive(value: Option<usize>, field: &str) -> Result<usize> {
    match required(value, field)? {
        0 => Err(ModelError::config(field, "must be positive, got 0")),
        v => Ok(v),
    }
}

fn token_ids(value: &Option<Value>, field: &str) -> Result<Vec<u32>> {
    let bad = || ModelError::config(field, "must be a token id or a list of token ids");
    let as_id = |v: &Value| {
        v.as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(bad)
    };
    match value {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(items)) => items.iter().map(as_id).collect(),
        Some(v) => Ok(vec![as_id(v)?]),
    }
}

pub(crate) fn parse_dtype(name: &str) -> Option<DType> {
    match name {
        "float32" | "f32" => Some(DType::F32),
        "bfloat16" | "bf16" => Some(DType::BF16),
        "float16" | "f16" | "half" => Some(DType::F16),
        _ => None,
    }
}

fn parse_arch(raw: &RawConfig) -> Result<(Arch, String)> {
    let from_model_type = |t: &str| match t {
        "deepseek_v2" => Some(Arch::V2),
        "deepseek_v3" | "kimi_k2" | glm::MODEL_TYPE => Some(Arch::V3),
        _ => None,
    };
    let from_architecture = |a: &str| match a {
        "DeepseekV2ForCausalLM" => Some((Arch::V2, "deepseek_v2")),
        "DeepseekV3ForCausalLM" => Some((Arch::V3, "deepseek_v3")),
        "Glm4MoeLiteForCausalLM" => Some((Arch::V3, glm::MODEL_TYPE)),
        _ => None,
    };
    if let Some(t) = &raw.model_type {
        return match from_model_type(t) {
            Some(arch) => Ok((arch, t.clone())),
            None => Err(ModelError::config(
                "model_type",
                format!(
                    "`{t}` is not supported (expected deepseek_v2, deepseek_v3, kimi_k2 \
                     or glm4_moe_lite)"
                ),
            )),
        };
    }
    let archs = raw.architectures.as_deref().unwrap_or_default();
    match archs.iter().find_map(|a| from_architecture(a)) {
        Some((arch, model_type)) => Ok((arch, model_type.into())),
        None => Err(ModelError::config(
            "model_type",
            format!("is missing and `architectures` {archs:?} names no supported model"),
        )),
    }
}

/// `(rope_theta, rope scaling dict)` from either layout.
fn rope_fields(raw: &RawConfig) -> Result<(f64, Option<serde_json::Map<String, Value>>)> {
    if let Some(params) = &raw.rope_parameters {
        let params = params
            .as_object()
            .ok_or_else(|| ModelError::config("rope_parameters", "must be an object"))?;
        let theta = params
            .get("rope_theta")
            .and_then(Value::as_f64)
            .or(raw.rope_theta)
            .ok_or_else(|| ModelError::config("rope_parameters.rope_theta", "is missing"))?;
        return Ok((theta, Some(params.clone())));
    }
    let theta = required(raw.rope_theta, "rope_theta")?;
    match &raw.rope_scaling {
        None | Some(Value::Null) => Ok((theta, None)),
        Some(Value::Object(map)) => Ok((theta, Some(map.clone()))),
        Some(_) => Err(ModelError::config(
            "rope_scaling",
            "must be an object or null",
        )),
    }
}

/// The rope is rotated over all of `qk_rope_head_dim`, in adjacent pairs: refuse
/// a config that asks for anything else rather than compute it wrongly.
fn check_rope_layout(
    raw: &RawConfig,
    scaling: Option<&serde_json::Map<String, Value>>,
) -> Result<()> {
    // transformers moves a top-level factor into `rope_parameters`, which wins.
    let factor = scaling
        .and_then(|m| m.get("partial_rotary_factor"))
        .map(|v| {
            v.as_f64()
                .ok_or_else(|| ModelError::config("partial_rotary_factor", "must be a number"))
        })
        .transpose()?
        .or(raw.partial_rotary_factor);
    if let Some(f) = factor.filter(|&f| f != 1.0) {
        return Err(ModelError::config(
            "partial_rotary_factor",
            format!("{f} is not supported (MLA rotates all of qk_rope_head_dim: 1.0)"),
        ));
    }
    if raw.rope_interleave == Some(false) {
        return Err(ModelError::config(
            "rope_interleave",
            "`false` (rotating halves) is not supported: DeepSeek-layout checkpoints \
             rotate adjacent pairs (`true`, the default)",
        ));
    }
    Ok(())
}

fn parse_yarn(map: Option<serde_json::Map<String, Value>>) -> Result<Option<Yarn>> {
    let Some(map) = map else { return Ok(None) };
    let kind = map
        .get("rope_type")
        .or_else(|| map.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    match kind {
        "default" => return Ok(None),
        "yarn" => {}
        other => {
            return Err(ModelError::config(
                "rope_scaling.type",
                format!("`{other}` is not supported (DeepSeek models use `yarn`)"),
            ))
        }
    }
    let num = |key: &str, default: f64| -> Result<f64> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_f64().ok_or_else(|| {
                ModelError::config(&format!("rope_scaling.{key}"), "must be a number")
            }),
        }
    };
    let factor = num("factor", f64::NAN)?;
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(ModelError::config(
            "rope_scaling.factor",
            "must be a number >= 1 for yarn",
        ));
    }
    let original = num("original_max_position_embeddings", 4096.0)?;
    if !(original >= 1.0 && original.fract() == 0.0) {
        return Err(ModelError::config(
            "rope_scaling.original_max_position_embeddings",
            format!("must be a positive integer, got {original}"),
        ));
    }
    Ok(Some(Yarn {
        factor,
        original_max_position_embeddings: original as usize,
        beta_fast: num("beta_fast", 32.0)?,
        beta_slow: num("beta_slow", 1.0)?,
        mscale: num("mscale", 1.0)?,
        mscale_all_dim: num("mscale_all_dim", 0.0)?,
    }))
}

fn parse_fp8(value: &Option<Value>) -> Result<Option<Fp8BlockQuant>> {
    let Some(value) = value.as_ref().filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let method = value.get("quant_method").and_then(Value::as_str);
    if method != Some("fp8") {
        return Err(ModelError::config(
            "quantization_config.quant_method",
            format!("{method:?} is not supported (only DeepSeek's block-scaled `fp8`)"),
        ));
    }
    let block = value
        .get("weight_block_size")
        .and_then(Value::as_array)
        .and_then(|b| match b.as_slice() {
            [r, c] => Some([r.as_u64()? as usize, c.as_u64()? as usize]),
            _ => None,
        })
        .filter(|[r, c]| *r > 0 && *c > 0)
        .ok_or_else(|| {
            ModelError::config(
                "quantization_config.weight_block_size",
                "must be two positive integers",
            )
        })?;
    Ok(Some(Fp8BlockQuant { block_size: block }))
}

fn parse_moe(raw: &RawConfig, arch: Arch, model_type: &str) -> Result<Option<MoeConfig>> {
    let Some(n_routed) = raw.n_routed_experts.filter(|&n| n > 0) else {
        return Ok(None);
    };
    let scoring_func = match raw.scoring_func.as_deref() {
        None => match arch {
            Arch::V2 => ScoringFunc::Softmax,
            Arch::V3 => ScoringFunc::Sigmoid,
        },
        Some("softmax") => ScoringFunc::Softmax,
        Some("sigmoid") => ScoringFunc::Sigmoid,
        Some(other) => {
            return Err(ModelError::config(
                "scoring_func",
                format!("`{other}` is not supported (expected softmax or sigmoid)"),
            ))
        }
    };
    let topk_method = match raw.topk_method.as_deref() {
        None => match arch {
            Arch::V2 => TopkMethod::Greedy,
            Arch::V3 => TopkMethod::NoauxTc,
        },
        // DeepSeek-V2's own config class defaults to the misspelt "gready".
        Some("greedy") | Some("gready") => TopkMethod::Greedy,
        Some("group_limited_greedy") => TopkMethod::GroupLimitedGreedy,
        Some("noaux_tc") => TopkMethod::NoauxTc,
        Some(other) => {
            return Err(ModelError::config(
                "topk_method",
                format!(
                    "`{other}` is not supported (expected greedy, group_limited_greedy or noaux_tc)"
                ),
            ))
        }
    };
    let n_group = raw.n_group.unwrap_or(1).max(1);
    let topk_group = raw.topk_group.unwrap_or(n_group).max(1);
    let top_k = positive(raw.num_experts_per_tok, "num_experts_per_tok")?;
    if n_routed % n_group != 0 {
        return Err(ModelError::config(
            "n_group",
            format!("({n_group}) must divide n_routed_experts ({n_routed})"),
        ));
    }
    if topk_group > n_group {
        return Err(ModelError::config(
            "topk_group",
            format!("({topk_group}) must not exceed n_group ({n_group})"),
        ));
    }
    let grouped = topk_method != TopkMethod::Greedy;
    let reachable = if grouped {
        topk_group * (n_routed / n_group)
    } else {
        n_routed
    };
    if top_k > reachable {
        return Err(ModelError::config(
            "num_experts_per_tok",
            format!("({top_k}) exceeds the {reachable} experts routing can choose from"),
        ));
    }
    if topk_method == TopkMethod::NoauxTc && n_routed / n_group < 2 && n_group > 1 {
        return Err(ModelError::config(
            "n_group",
            "noaux_tc ranks groups by their top-2 experts, so groups need at least 2 experts",
        ));
    }
    let (first_k_dense_replace, moe_layer_freq) = if model_type == glm::MODEL_TYPE {
        glm::moe_layers(raw)?
    } else {
        let freq = raw.moe_layer_freq.unwrap_or(1);
        if freq == 0 {
            return Err(ModelError::config(
                "moe_layer_freq",
                "must be positive, got 0",
            ));
        }
        (raw.first_k_dense_replace.unwrap_or(0), freq)
    };
    Ok(Some(MoeConfig {
        n_routed_experts: n_routed,
        n_shared_experts: raw.n_shared_experts.unwrap_or(0),
        num_experts_per_tok: top_k,
        moe_intermediate_size: positive(raw.moe_intermediate_size, "moe_intermediate_size")?,
        first_k_dense_replace,
        moe_layer_freq,
        routed_scaling_factor: raw.routed_scaling_factor.unwrap_or(1.0),
        scoring_func,
        topk_method,
        n_group,
        topk_group,
        norm_topk_prob: raw.norm_topk_prob.unwrap_or(false),
    }))
}

impl DeepSeekConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        Self::from_raw(read_json(path)?)
    }

    pub fn from_json(text: &str) -> Result<Self> {
        Self::from_raw(parse_json(text, Path::new("config.json"))?)
    }

    fn from_raw(raw: RawConfig) -> Result<Self> {
        let (arch, model_type) = parse_arch(&raw)?;
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::config(
                "hidden_act",
                format!("`{act}` is not supported (DeepSeek models use silu)"),
            ));
        }
        if raw.attention_bias == Some(true) {
            return Err(ModelError::config(
                "attention_bias",
                "`true` is not supported (no DeepSeek checkpoint uses attention biases)",
            ));
        }
        let heads = positive(raw.num_attention_heads, "num_attention_heads")?;
        if let Some(kv_heads) = raw.num_key_value_heads.filter(|&k| k != heads) {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!("({kv_heads}) must equal num_attention_heads ({heads}) for MLA"),
            ));
        }
        let qk_rope_head_dim = positive(raw.qk_rope_head_dim, "qk_rope_head_dim")?;
        if qk_rope_head_dim % 2 != 0 {
            return Err(ModelError::config(
                "qk_rope_head_dim",
                format!("must be even, got {qk_rope_head_dim}"),
            ));
        }
        let (rope_theta, scaling) = rope_fields(&raw)?;
        check_rope_layout(&raw, scaling.as_ref())?;
        let dtype_name = raw.torch_dtype.as_deref().or(raw.dtype.as_deref());
        let torch_dtype = match dtype_name {
            None => None,
            Some(name) => Some(parse_dtype(name).ok_or_else(|| {
                ModelError::config("torch_dtype", format!("`{name}` is not supported"))
            })?),
        };
        let moe = parse_moe(&raw, arch, &model_type)?;
        let intermediate_size = match &moe {
            // Only needed for dense layers; a model whose every layer is MoE may omit it.
            Some(m) if m.first_k_dense_replace == 0 && m.moe_layer_freq == 1 => {
                raw.intermediate_size.unwrap_or(0)
            }
            _ => positive(raw.intermediate_size, "intermediate_size")?,
        };
        Ok(DeepSeekConfig {
            arch,
            model_type,
            vocab_size: positive(raw.vocab_size, "vocab_size")?,
            hidden_size: positive(raw.hidden_size, "hidden_size")?,
            intermediate_size,
            num_hidden_layers: positive(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads: heads,
            q_lora_rank: raw.q_lora_rank.filter(|&r| r > 0),
            kv_lora_rank: positive(raw.kv_lora_rank, "kv_lora_rank")?,
            qk_nope_head_dim: positive(raw.qk_nope_head_dim, "qk_nope_head_dim")?,
            qk_rope_head_dim,
            v_head_dim: positive(raw.v_head_dim, "v_head_dim")?,
            moe,
            rope_theta,
            yarn: parse_yarn(scaling)?,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            max_position_embeddings: positive(
                raw.max_position_embeddings,
                "max_position_embeddings",
            )?,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: token_ids(&raw.bos_token_id, "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: token_ids(&raw.eos_token_id, "eos_token_id")?,
            torch_dtype,
            fp8: parse_fp8(&raw.quantization_config)?,
        })
    }

    /// Width of one query/key head: no-rope part plus rope part.
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Numbers cached per token and layer: the latent plus the rotated rope key.
    pub fn latent_width(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }

    /// Whether decoder layer `layer` uses experts (DeepSeek's rule).
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| {
            layer >= m.first_k_dense_replace && layer.is_multiple_of(m.moe_layer_freq)
        })
    }

    /// Softmax scale of attention, including YaRN's `mscale_all_dim` correction.
    pub fn softmax_scale(&self) -> f64 {
        let base = (self.qk_head_dim() as f64).powf(-0.5);
        match &self.yarn {
            Some(y) if y.mscale_all_dim != 0.0 => {
                let m = yarn_mscale(y.factor, y.mscale_all_dim);
                base * m * m
            }
            _ => base,
        }
    }
}

/// YaRN's magnitude correction `0.1 * mscale * ln(scale) + 1` (1 when not scaling).
pub fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}
