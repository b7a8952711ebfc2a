//! Hugging Face tensor names → where llama.cpp's converter put them in a
//! `deepseek2` GGUF (`gguf-py/gguf/constants.py`, `tensor_mapping.py`).

/// Where a Hugging Face tensor lives in the GGUF.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// One GGUF tensor, the same numbers in the same PyTorch shape.
    Tensor(String),
    /// Expert `e` of a stacked `[experts, rows, cols]` tensor.
    Expert(String, usize),
    /// `kv_b_proj` rebuilt from its per-head split: `attn_k_b`
    /// (`[heads, rank, nope]`, each head's key part transposed) and
    /// `attn_v_b` (`[heads, v, rank]`).
    SplitKvB { k_b: String, v_b: String },
}

/// The top-level tensors.
const GLOBAL: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// Per-layer tensors: the part after `model.layers.N.`, and after `blk.N.`.
const LAYER: &[(&str, &str)] = &[
    ("input_layernorm.weight", "attn_norm.weight"),
    ("self_attn.q_proj.weight", "attn_q.weight"),
    ("self_attn.q_a_proj.weight", "attn_q_a.weight"),
    ("self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight"),
    ("self_attn.q_b_proj.weight", "attn_q_b.weight"),
    (
        "self_attn.kv_a_proj_with_mqa.weight",
        "attn_kv_a_mqa.weight",
    ),
    ("self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight"),
    ("self_attn.o_proj.weight", "attn_output.weight"),
    // MLA's per-head matrices as the converter splits `kv_b_proj`: the key
    // part `[heads, rank, nope]` (each head's transposed), the value part
    // `[heads, v, rank]`. Not Hugging Face names: the attention asks for
    // these first, and a file with the split offers them as they are.
    ("self_attn.w_uk.weight", "attn_k_b.weight"),
    ("self_attn.w_uv.weight", "attn_v_b.weight"),
    ("post_attention_layernorm.weight", "ffn_norm.weight"),
    ("mlp.gate_proj.weight", "ffn_gate.weight"),
    ("mlp.up_proj.weight", "ffn_up.weight"),
    ("mlp.down_proj.weight", "ffn_down.weight"),
    ("mlp.gate.weight", "ffn_gate_inp.weight"),
    ("mlp.gate.e_score_correction_bias", "exp_probs_b.bias"),
    (
        "mlp.shared_experts.gate_proj.weight",
        "ffn_gate_shexp.weight",
    ),
    ("mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight"),
    (
        "mlp.shared_experts.down_proj.weight",
        "ffn_down_shexp.weight",
    ),
];

/// Routed experts: `mlp.experts.E.<this>` → `blk.N.<that>`, stacked.
const EXPERT: &[(&str, &str)] = &[
    ("gate_proj.weight", "ffn_gate_exps.weight"),
    ("up_proj.weight", "ffn_up_exps.weight"),
    ("down_proj.weight", "ffn_down_exps.weight"),
];

/// Where `hf_name` is, given which GGUF tensors exist (`has`); `None` when
/// the name has no GGUF counterpart or that is absent.
pub(super) fn source(hf_name: &str, has: impl Fn(&str) -> bool) -> Option<Source> {
    let present = |name: String| has(&name).then_some(name);
    if let Some((_, gguf)) = GLOBAL.iter().find(|(hf, _)| *hf == hf_name) {
        return present(gguf.to_string()).map(Source::Tensor);
    }
    let rest = hf_name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let blk = |name: &str| format!("blk.{layer}.{name}");
    if let Some((_, gguf)) = LAYER.iter().find(|(hf, _)| *hf == rest) {
        return present(blk(gguf)).map(Source::Tensor);
    }
    if rest == "self_attn.kv_b_proj.weight" {
        if let Some(whole) = present(blk("attn_kv_b.weight")) {
            return Some(Source::Tensor(whole));
        }
        let (k_b, v_b) = (
            present(blk("attn_k_b.weight"))?,
            present(blk("attn_v_b.weight"))?,
        );
        return Some(Source::SplitKvB { k_b, v_b });
    }
    let (expert, part) = rest.strip_prefix("mlp.experts.")?.split_once('.')?;
    let expert: usize = expert.parse().ok()?;
    let (_, gguf) = EXPERT.iter().find(|(hf, _)| *hf == part)?;
    present(blk(gguf)).map(|name| Source::Expert(name, expert))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(_: &str) -> bool {
        true
    }

    #[test]
    fn hf_names_map_to_converter_names() {
        let t = |s: &str| Some(Source::Tensor(s.to_string()));
        assert_eq!(
            source("model.embed_tokens.weight", all),
            t("token_embd.weight")
        );
        assert_eq!(
            source("model.layers.3.self_attn.q_a_layernorm.weight", all),
            t("blk.3.attn_q_a_norm.weight")
        );
        assert_eq!(
            source("model.layers.1.mlp.gate.e_score_correction_bias", all),
            t("blk.1.exp_probs_b.bias")
        );
        assert_eq!(
            source("model.layers.2.mlp.experts.15.down_proj.weight", all),
            Some(Source::Expert("blk.2.ffn_down_exps.weight".into(), 15))
        );
        assert_eq!(
            source("model.layers.2.mlp.experts.x.down_proj.weight", all),
            None
        );
        assert_eq!(
            source("model.layers.0.self_attn.rotary_emb.inv_freq", all),
            None
        );
    }

    #[test]
    fn kv_b_proj_prefers_the_whole_tensor_then_the_split() {
        assert_eq!(
            source("model.layers.0.self_attn.kv_b_proj.weight", all),
            Some(Source::Tensor("blk.0.attn_kv_b.weight".into()))
        );
        let split = |n: &str| n != "blk.0.attn_kv_b.weight";
        assert_eq!(
            source("model.layers.0.self_attn.kv_b_proj.weight", split),
            Some(Source::SplitKvB {
                k_b: "blk.0.attn_k_b.weight".into(),
                v_b: "blk.0.attn_v_b.weight".into()
            })
        );
        let neither = |n: &str| !n.contains("_b.weight");
        assert_eq!(
            source("model.layers.0.self_attn.kv_b_proj.weight", neither),
            None
        );
    }

    #[test]
    fn absent_tensors_have_no_source() {
        assert_eq!(source("lm_head.weight", |n| n != "output.weight"), None);
    }
}
