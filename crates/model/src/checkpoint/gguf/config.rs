//! A `deepseek2` GGUF's metadata → [`DeepSeekConfig`], as llama.cpp's
//! converter wrote it from `config.json` (`conversion/deepseek.py`,
//! `base.py`). A key the model needs and the file lacks is an error that
//! names the key; defaults are only those of the format itself (what
//! llama.cpp's loader assumes when an optional key is absent).
//!
//! What GGUF does not record is inferred from what it does:
//! * DeepSeek-V3 vs V2: V3's routers score with sigmoid and carry a score
//!   correction bias (`exp_probs_b`), so `expert_gating_func` = sigmoid
//!   (or, the key absent, a correction bias) means V3's routing
//!   (`noaux_tc`), softmax V2's (`group_limited_greedy` with expert groups,
//!   else `greedy`).
//! * YaRN's `mscale` and `mscale_all_dim`: only `0.1 · mscale_all_dim` is
//!   stored (`yarn_log_multiplier`); DeepSeek's configs set both equal
//!   (which is what llama.cpp assumes too), and absent means DeepSeek's
//!   defaults (1 and 0).
//! * `tie_word_embeddings`: the converter drops `output` when tied.

use candle_core::quantized::gguf_file::Value;

use super::{gguf_error, GgufCheckpoint};
use crate::config::{Arch, DeepSeekConfig, MoeConfig, ScoringFunc, TopkMethod, Yarn};
use crate::error::Result;

/// The metadata of the first file, read key by key.
struct Meta<'a> {
    gguf: &'a GgufCheckpoint,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.gguf.main().content.metadata.get(key)
    }

    fn error(&self, key: &str, message: &str) -> crate::error::ModelError {
        gguf_error(
            &self.gguf.main().path,
            format!("metadata key `{key}` {message}"),
        )
    }

    fn uint(&self, key: &str) -> Result<Option<usize>> {
        let value = match self.get(key) {
            None => return Ok(None),
            Some(Value::U8(v)) => Some(*v as u64),
            Some(Value::U16(v)) => Some(*v as u64),
            Some(Value::U32(v)) => Some(*v as u64),
            Some(Value::U64(v)) => Some(*v),
            Some(Value::I32(v)) => u64::try_from(*v).ok(),
            Some(Value::I64(v)) => u64::try_from(*v).ok(),
            Some(Value::Array(_)) => {
                return Err(self.error(key, "is a per-layer array, which is not supported yet"))
            }
            Some(_) => None,
        };
        value
            .map(|v| Some(v as usize))
            .ok_or_else(|| self.error(key, "must be a non-negative integer"))
    }

    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(v)) => Ok(Some(*v as f64)),
            Some(Value::F64(v)) => Ok(Some(*v)),
            Some(_) => Err(self.error(key, "must be a number")),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(v)) => Ok(Some(*v)),
            Some(_) => Err(self.error(key, "must be a bool")),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(v)) => Ok(Some(v)),
            Some(_) => Err(self.error(key, "must be a string")),
        }
    }

    fn required<T>(&self, key: &str, value: Option<T>) -> Result<T> {
        value.ok_or_else(|| self.error(key, "is missing"))
    }

    /// `deepseek2.<key>`, required and positive.
    fn positive(&self, key: &str) -> Result<usize> {
        let key = format!("{ARCH}.{key}");
        match self.required(&key, self.uint(&key)?)? {
            0 => Err(self.error(&key, "must be positive, got 0")),
            v => Ok(v),
        }
    }

    fn arch_uint(&self, key: &str) -> Result<Option<usize>> {
        self.uint(&format!("{ARCH}.{key}"))
    }

    fn arch_float(&self, key: &str) -> Result<Option<f64>> {
        self.float(&format!("{ARCH}.{key}"))
    }
}

const ARCH: &str = "deepseek2";

pub(super) fn deepseek_config(gguf: &GgufCheckpoint) -> Result<DeepSeekConfig> {
    let meta = Meta { gguf };
    let arch_key = "general.architecture";
    match meta.string(arch_key)? {
        Some(ARCH) => {}
        Some(other) => {
            return Err(meta.error(
                arch_key,
                &format!("is `{other}`; only `{ARCH}` is supported"),
            ))
        }
        None => return Err(meta.error(arch_key, "is missing")),
    }
    // The last `nextn_predict_layers` blocks are multi-token-prediction
    // layers, kept by llama.cpp's converter for GLM-4.7-Flash and
    // DeepSeek-V3.2 (their `blk.N` tensors past the model's layers). The
    // model does not draft with them: they stay unread in the mapping.
    let blocks = meta.positive("block_count")?;
    let nextn = meta.arch_uint("nextn_predict_layers")?.unwrap_or(0);
    if nextn >= blocks {
        return Err(meta.error(
            &format!("{ARCH}.nextn_predict_layers"),
            &format!("is {nextn}, which leaves none of the {blocks} blocks to the model"),
        ));
    }
    let heads = meta.positive("attention.head_count")?;
    let rope = meta.positive("rope.dimension_count")?;
    // MLA files say the per-head sizes in `*_mla`; legacy files (whole
    // `attn_kv_b`) in `key_length` / `value_length`.
    let (k_key, v_key) = match meta.arch_uint("attention.key_length_mla")? {
        Some(_) => ("attention.key_length_mla", "attention.value_length_mla"),
        None => ("attention.key_length", "attention.value_length"),
    };
    let key_length = meta.positive(k_key)?;
    if key_length <= rope {
        return Err(meta.error(
            &format!("{ARCH}.{k_key}"),
            &format!("({key_length}) must exceed the rope width ({rope})"),
        ));
    }
    let embed_dims = gguf
        .dims("token_embd.weight")
        .ok_or_else(|| gguf_error(&gguf.main().path, "has no tensor `token_embd.weight`"))?;
    let hidden = meta.positive("embedding_length")?;
    let vocab = match embed_dims {
        [v, h] if *h == hidden => *v,
        other => {
            return Err(gguf_error(
                &gguf.main().path,
                format!(
                    "tensor `token_embd.weight` has shape {other:?}, expected [vocab, {hidden}]"
                ),
            ))
        }
    };
    let moe = moe_config(&meta)?;
    let arch = match &moe {
        Some(m) if m.scoring_func == ScoringFunc::Sigmoid => Arch::V3,
        _ => Arch::V2,
    };
    let dense_everywhere =
        moe.is_none() || moe.as_ref().is_some_and(|m| m.first_k_dense_replace > 0);
    let intermediate_size = if dense_everywhere {
        meta.positive("feed_forward_length")?
    } else {
        meta.arch_uint("feed_forward_length")?.unwrap_or(0)
    };
    let token_id = |key: &str| -> Result<Option<u32>> {
        Ok(meta.uint(key)?.and_then(|v| u32::try_from(v).ok()))
    };
    Ok(DeepSeekConfig {
        arch,
        model_type: match arch {
            Arch::V2 => "deepseek_v2",
            Arch::V3 => "deepseek_v3",
        }
        .into(),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size,
        num_hidden_layers: blocks - nextn,
        num_attention_heads: heads,
        q_lora_rank: meta.arch_uint("attention.q_lora_rank")?.filter(|&r| r > 0),
        kv_lora_rank: meta.positive("attention.kv_lora_rank")?,
        qk_nope_head_dim: key_length - rope,
        qk_rope_head_dim: rope,
        v_head_dim: meta.positive(v_key)?,
        moe,
        rope_theta: meta.arch_float("rope.freq_base")?.unwrap_or(10_000.0),
        yarn: yarn(&meta)?,
        rms_norm_eps: meta.required(
            &format!("{ARCH}.attention.layer_norm_rms_epsilon"),
            meta.arch_float("attention.layer_norm_rms_epsilon")?,
        )?,
        max_position_embeddings: meta.positive("context_length")?,
        tie_word_embeddings: !gguf.has("output.weight"),
        bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
        // Generation ends at eos and, as in llama.cpp, at the ends of a
        // turn and of a message the file names.
        eos_token_ids: {
            let mut ids = Vec::new();
            for key in ["eos", "eot", "eom"] {
                if let Some(id) = token_id(&format!("tokenizer.ggml.{key}_token_id"))? {
                    if !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            ids
        },
        torch_dtype: None,
        fp8: None,
    })
}

fn moe_config(meta: &Meta) -> Result<Option<MoeConfig>> {
    let Some(experts) = meta.arch_uint("expert_count")?.filter(|&e| e > 0) else {
        return Ok(None);
    };
    let gating_key = format!("{ARCH}.expert_gating_func");
    let first_moe = meta.arch_uint("leading_dense_block_count")?.unwrap_or(0);
    let has_bias = meta.gguf.has(&format!("blk.{first_moe}.exp_probs_b.bias"));
    let scoring_func = match meta.uint(&gating_key)? {
        // Absent: the converter writes the key only when config.json names
        // `scoring_func`, which transformers 5 drops from V3 configs. A
        // score correction bias is V3's sigmoid routing (llama.cpp would
        // assume softmax); without one, softmax, as for V2 files older
        // than the key.
        None if has_bias => ScoringFunc::Sigmoid,
        None | Some(1) => ScoringFunc::Softmax,
        Some(2) => ScoringFunc::Sigmoid,
        Some(other) => {
            return Err(meta.error(
                &gating_key,
                &format!("is {other}; only 1 (softmax) and 2 (sigmoid) are supported"),
            ))
        }
    };
    let n_group = meta.arch_uint("expert_group_count")?.unwrap_or(1).max(1);
    let topk_method = match (scoring_func, n_group) {
        (ScoringFunc::Sigmoid, _) => TopkMethod::NoauxTc,
        (ScoringFunc::Softmax, 1) => TopkMethod::Greedy,
        (ScoringFunc::Softmax, _) => TopkMethod::GroupLimitedGreedy,
    };
    let scale = meta.arch_float("expert_weights_scale")?.unwrap_or(0.0);
    let top_k = meta.positive("expert_used_count")?;
    let topk_group = meta
        .arch_uint("expert_group_used_count")?
        .unwrap_or(n_group)
        .max(1);
    if experts % n_group != 0 || topk_group > n_group {
        return Err(meta.error(
            &format!("{ARCH}.expert_group_count"),
            &format!("({n_group}) must divide expert_count ({experts}) and be at least expert_group_used_count ({topk_group})"),
        ));
    }
    if top_k > topk_group * (experts / n_group) {
        return Err(meta.error(
            &format!("{ARCH}.expert_used_count"),
            &format!("({top_k}) exceeds the experts routing can choose from"),
        ));
    }
    Ok(Some(MoeConfig {
        n_routed_experts: experts,
        n_shared_experts: meta.required(
            &format!("{ARCH}.expert_shared_count"),
            meta.arch_uint("expert_shared_count")?,
        )?,
        num_experts_per_tok: top_k,
        moe_intermediate_size: meta.positive("expert_feed_forward_length")?,
        first_k_dense_replace: meta.arch_uint("leading_dense_block_count")?.unwrap_or(0),
        moe_layer_freq: 1,
        // 0 is the format's "no scaling".
        routed_scaling_factor: if scale == 0.0 { 1.0 } else { scale },
        scoring_func,
        topk_method,
        n_group,
        topk_group,
        norm_topk_prob: meta
            .boolean(&format!("{ARCH}.expert_weights_norm"))?
            .unwrap_or(false),
    }))
}

fn yarn(meta: &Meta) -> Result<Option<Yarn>> {
    let type_key = format!("{ARCH}.rope.scaling.type");
    match meta.string(&type_key)? {
        None | Some("none") => return Ok(None),
        Some("yarn") => {}
        Some(other) => {
            return Err(meta.error(
                &type_key,
                &format!("is `{other}`; only `yarn` is supported (DeepSeek models use it)"),
            ))
        }
    }
    let factor_key = format!("{ARCH}.rope.scaling.factor");
    let factor = meta.required(&factor_key, meta.float(&factor_key)?)?;
    if !(factor.is_finite() && factor >= 1.0) {
        return Err(meta.error(&factor_key, "must be a number >= 1 for yarn"));
    }
    let original_key = format!("{ARCH}.rope.scaling.original_context_length");
    let original = meta.required(&original_key, meta.uint(&original_key)?)?;
    // Divided in f32, as stored: `0.1 · 1.0` comes back as exactly 1.
    let mscale = meta
        .arch_float("rope.scaling.yarn_log_multiplier")?
        .map_or(0.0, |l| (l as f32 / 0.1f32) as f64);
    Ok(Some(Yarn {
        factor,
        original_max_position_embeddings: original,
        beta_fast: meta
            .arch_float("rope.scaling.yarn_beta_fast")?
            .unwrap_or(32.0),
        beta_slow: meta
            .arch_float("rope.scaling.yarn_beta_slow")?
            .unwrap_or(1.0),
        mscale: if mscale == 0.0 { 1.0 } else { mscale },
        mscale_all_dim: mscale,
    }))
}
