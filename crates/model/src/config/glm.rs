//! GLM-4.7-Flash (`glm4_moe_lite`, transformers' `Glm4MoeLiteForCausalLM`).
//!
//! Its modeling code is DeepSeek-V3's: MLA attention with interleaved rope
//! pairs and the inner norms at eps 1e-6, V3's router (sigmoid, bias only for
//! the choice, top-k normalised, times `routed_scaling_factor`), shared experts
//! added to the routed ones. Only the config differs:
//!
//! * which layers are MoE comes from `mlp_layer_types` (`"dense"`/`"sparse"`
//!   per layer; default: the first layer dense, the rest sparse), not from
//!   `first_k_dense_replace`, which transformers does not read but vLLM does;
//! * there is no `scoring_func` key (the router is always sigmoid, V3's
//!   default here) and `partial_rotary_factor` sits at the top level (1.0; any
//!   other value is refused in `config.rs`);
//! * the head sizes have other relations (`qk_nope_head_dim` 192, `v_head_dim`
//!   256), which the generic MLA code takes as they come.

use super::RawConfig;
use crate::error::{ModelError, Result};

pub(super) const MODEL_TYPE: &str = "glm4_moe_lite";

/// `(first_k_dense_replace, moe_layer_freq)` equivalent to the config's
/// `mlp_layer_types`, as transformers decides the MoE layers. Patterns other
/// than dense layers followed by sparse ones are refused, and so is a
/// `first_k_dense_replace` or `moe_layer_freq` that says otherwise (vLLM would
/// follow those and compute another model).
pub(super) fn moe_layers(raw: &RawConfig) -> Result<(usize, usize)> {
    let layers = raw.num_hidden_layers.unwrap_or(0);
    let dense = match &raw.mlp_layer_types {
        None => layers.min(1),
        Some(types) => leading_dense(types, layers)?,
    };
    if let Some(k) = raw.first_k_dense_replace.filter(|&k| k != dense) {
        return Err(ModelError::config(
            "first_k_dense_replace",
            format!(
                "({k}) disagrees with the {dense} leading dense layers of `mlp_layer_types` \
                 (transformers' default when it is absent: 1)"
            ),
        ));
    }
    if let Some(f) = raw.moe_layer_freq.filter(|&f| f != 1) {
        return Err(ModelError::config(
            "moe_layer_freq",
            format!("({f}) is not supported for glm4_moe_lite (`mlp_layer_types` decides)"),
        ));
    }
    Ok((dense, 1))
}

fn leading_dense(types: &[String], layers: usize) -> Result<usize> {
    if types.len() != layers {
        return Err(ModelError::config(
            "mlp_layer_types",
            format!(
                "has {} entries for {layers} layers (num_hidden_layers)",
                types.len()
            ),
        ));
    }
    if let Some(bad) = types
        .iter()
        .find(|t| !matches!(t.as_str(), "dense" | "sparse"))
    {
        return Err(ModelError::config(
            "mlp_layer_types",
            format!("`{bad}` is not a layer type (expected dense or sparse)"),
        ));
    }
    let dense = types.iter().take_while(|t| *t == "dense").count();
    if types[dense..].iter().any(|t| t == "dense") {
        return Err(ModelError::config(
            "mlp_layer_types",
            "is supported only as dense layers followed by sparse ones",
        ));
    }
    Ok(dense)
}
