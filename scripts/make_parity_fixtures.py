#!/usr/bin/env python3
"""Build tiny random DeepSeek-V2/V3 models, and models of the families that reuse that
architecture (Moonlight, Kimi-K2, GLM-4.7-Flash), with Hugging Face transformers' built-in
classes and record reference outputs for the Rust parity tests.

For each model NAME this writes crates/model/tests/fixtures/NAME/:
  config.json            the layout the checkpoint's owner ships (DeepSeek's hub layout; Kimi's
                         `kimi_k2` model_type; GLM's `glm4_moe_lite`) or the transformers-5
                         layout written by save_pretrained (v3_yarn_mscale1)
  model.safetensors      f32 weights with DeepSeek's checkpoint tensor names (per-expert names)
  reference.safetensors  expected outputs, computed by HF from a from_pretrained() of that very
                         folder, in float32, eager attention, no KV cache:
      case{k}.prompt            I64 [T]     prompt ids
      case{k}.logprobs          F32 [T, V]  log_softmax of the logits at every prompt position
      case{k}.greedy            I64 [8]     greedy continuation (full forward each step, no cache)
      case{k}.greedy_logprobs   F32 [8, V]  log_softmax row at each greedy step
      case{k}.greedy_margins    F32 [8]     top1 - top2 logit at each greedy step
      case{k}.bf16_logprobs     F32 [T, V]  prompt log-probs with the model cast by
                                            model.to(torch.bfloat16) (router and inv_freq too)
  plus string metadata (library versions, attention implementation, seeds).

Deterministic: fixed seeds, float32, single thread, deterministic algorithms.
Run:  <venv>/bin/python scripts/make_parity_fixtures.py   (from the repository root)
"""

import copy
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM, DeepseekV3Config, DeepseekV3ForCausalLM

from deepseek_files import canonicalize_safetensors

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join(ROOT, "crates", "model", "tests", "fixtures")

PROMPT_LENS = [5, 13, 27]
GREEDY_STEPS = 8
ATTN = "eager"

# ----------------------------------------------------------------------------------------------
# Configs. Models 1-3: DeepSeek's own hub layout, written by hand.
# ----------------------------------------------------------------------------------------------

COMMON = {
    "attention_bias": False,
    "attention_dropout": 0.0,
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 96,
    "kv_lora_rank": 32,
    "max_position_embeddings": 128,
    "moe_intermediate_size": 32,
    "moe_layer_freq": 1,
    "n_routed_experts": 8,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "pretraining_tp": 1,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "rope_theta": 10000,
    "seq_aux": True,
    "torch_dtype": "float32",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 12,
    "vocab_size": 256,
}

V2_AUTO_MAP = {
    "AutoConfig": "configuration_deepseek.DeepseekV2Config",
    "AutoModel": "modeling_deepseek.DeepseekV2Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV2ForCausalLM",
}
V3_AUTO_MAP = {
    "AutoConfig": "configuration_deepseek.DeepseekV3Config",
    "AutoModel": "modeling_deepseek.DeepseekV3Model",
    "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
}


def hub_config(arch, model_type, auto_map, **kw):
    cfg = {"architectures": [arch], "auto_map": auto_map, "model_type": model_type}
    cfg.update(COMMON)
    cfg.update(kw)
    return dict(sorted(cfg.items()))


V2_PLAIN = hub_config(
    "DeepseekV2ForCausalLM", "deepseek_v2", V2_AUTO_MAP,
    first_k_dense_replace=1,
    n_group=1,
    n_shared_experts=2,
    norm_topk_prob=False,
    num_experts_per_tok=2,
    q_lora_rank=None,
    rms_norm_eps=1e-6,
    rope_scaling=None,
    routed_scaling_factor=1.0,
    scoring_func="softmax",
    tie_word_embeddings=True,
    topk_group=1,
    topk_method="greedy",
)

V2_GROUP = hub_config(
    "DeepseekV2ForCausalLM", "deepseek_v2", V2_AUTO_MAP,
    first_k_dense_replace=1,
    n_group=4,
    n_shared_experts=1,
    norm_topk_prob=False,
    num_experts_per_tok=3,
    q_lora_rank=24,
    rms_norm_eps=1e-5,
    rope_scaling=None,
    routed_scaling_factor=2.0,
    scoring_func="softmax",
    tie_word_embeddings=False,
    topk_group=2,
    topk_method="group_limited_greedy",
)

V3_NOAUX_YARN = hub_config(
    "DeepseekV3ForCausalLM", "deepseek_v3", V3_AUTO_MAP,
    ep_size=1,
    first_k_dense_replace=1,
    # DeepSeek's convention: max_position_embeddings = factor * original_max_position_embeddings
    max_position_embeddings=64,
    n_group=4,
    n_shared_experts=1,
    norm_topk_prob=True,
    num_experts_per_tok=2,
    num_nextn_predict_layers=0,
    q_lora_rank=24,
    rms_norm_eps=1e-6,
    rope_scaling={
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 4,
        "mscale": 0.707,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 16,
        "type": "yarn",
    },
    routed_scaling_factor=2.5,
    scoring_func="sigmoid",
    tie_word_embeddings=False,
    topk_group=2,
    topk_method="noaux_tc",
)


def v3_yarn_mscale1_config():
    """Model 4: built from DeepseekV3Config and saved by save_pretrained (transformers-5 layout).

    rope_theta is 10 (not 10000) on purpose: with original_max_position_embeddings 16 and a rope
    dim of 8, a base of 10000 gives a YaRN ramp of only 0s and 1s; a base of 10 gives the ramp
    [0, 0.5, 1, 1], so the blended (fractional) case is exercised too.
    """
    return DeepseekV3Config(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        moe_intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        n_shared_experts=1,
        n_routed_experts=8,
        routed_scaling_factor=1.5,
        kv_lora_rank=32,
        q_lora_rank=24,
        qk_rope_head_dim=8,
        v_head_dim=12,
        qk_nope_head_dim=16,
        n_group=1,
        topk_group=1,
        num_experts_per_tok=2,
        first_k_dense_replace=2,
        norm_topk_prob=False,
        hidden_act="silu",
        max_position_embeddings=128,
        rms_norm_eps=1e-5,
        bos_token_id=0,
        eos_token_id=1,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10.0,
            "factor": 8.0,
            "original_max_position_embeddings": 16,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    )


# ----------------------------------------------------------------------------------------------
# The relatives: checkpoints of other owners that reuse DeepSeek-V3's architecture. Each tiny
# config keeps the real checkpoint's option mix and key layout; only the sizes shrink (hidden 64,
# 3 layers, 8 experts, vocab 256). Real values are from ../shared/notes/tiktoken-and-relatives.md
# §7 (third-party copies of the owners' config.json; the owners' files were not reachable).
# ----------------------------------------------------------------------------------------------

# Moonlight-16B-A3B-Instruct: deepseek_v3 with no q_lora (plain q_proj), 2 shared experts,
# sigmoid + noaux_tc without groups (n_group = topk_group = 1), norm_topk_prob, scale 2.446,
# one dense layer, plain RoPE at theta 50000 (no scaling), rms_norm_eps 1e-5. As in the real
# model, heads * v_head_dim equals hidden_size and v_head_dim equals qk_nope_head_dim
# (2 x qk_rope_head_dim). 64 routed experts, top-6 become 8, top-3.
MOONLIGHT = hub_config(
    "DeepseekV3ForCausalLM", "deepseek_v3", V3_AUTO_MAP,
    ep_size=1,
    first_k_dense_replace=1,
    max_position_embeddings=8192,
    n_group=1,
    n_shared_experts=2,
    norm_topk_prob=True,
    num_experts_per_tok=3,
    num_nextn_predict_layers=0,
    q_lora_rank=None,
    rms_norm_eps=1e-5,
    rope_scaling=None,
    rope_theta=50000.0,
    routed_scaling_factor=2.446,
    scoring_func="sigmoid",
    tie_word_embeddings=False,
    topk_group=1,
    topk_method="noaux_tc",
    v_head_dim=16,
)

# Kimi-K2-Instruct: model_type `kimi_k2` (transformers does not register it; the script builds
# the reference with DeepseekV3ForCausalLM, which is what Moonshot's own instructions and
# transformers' kimi_k25 do with it), q_lora set, 1 shared expert, sigmoid + noaux_tc without
# groups, norm_topk_prob, scale 2.827, one dense layer, YaRN factor 32 with beta_fast =
# beta_slow = 1 and mscale = mscale_all_dim = 1 over rope_theta 50000. Fewer heads per hidden
# width than DeepSeek-V3, yet heads * v_head_dim > hidden_size (64 x 128 = 8192 > 7168 in the
# real model; 8 x 16 = 128 > 64 here). original_max_position_embeddings 4096 becomes 16 so that
# the 27-token prompt runs past it, with max_position_embeddings = 32 x 16 as in the real
# 131072 = 32 x 4096; with rope dim 8 and theta 50000 the YaRN ramp is a hard step (pair 0 kept,
# pairs 1-3 divided by 32), as the real one is (pairs 0-19 kept, 20-31 divided).
# Unconfirmed: rms_norm_eps (1e-6 in the copies of K2-Instruct's config; a K2.5 text_config
# says 1e-5): 1e-6 is used. 384 routed experts, top-8 become 8, top-4.
KIMI_K2 = hub_config(
    "DeepseekV3ForCausalLM", "kimi_k2", V3_AUTO_MAP,
    ep_size=1,
    first_k_dense_replace=1,
    max_position_embeddings=512,
    n_group=1,
    n_shared_experts=1,
    norm_topk_prob=True,
    num_attention_heads=8,
    num_experts_per_tok=4,
    num_key_value_heads=8,
    num_nextn_predict_layers=0,
    q_lora_rank=24,
    rms_norm_eps=1e-6,
    rope_scaling={
        "beta_fast": 1.0,
        "beta_slow": 1.0,
        "factor": 32.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 16,
        "type": "yarn",
    },
    rope_theta=50000.0,
    routed_scaling_factor=2.827,
    scoring_func="sigmoid",
    tie_word_embeddings=False,
    topk_group=1,
    topk_method="noaux_tc",
    v_head_dim=16,
)

# GLM-4.7-Flash: model_type `glm4_moe_lite` (Glm4MoeLiteForCausalLM, transformers >= 5). Keys as
# GLM's config.json has them (per the vLLM test config): top-level rope_theta 1e6 with
# rope_scaling null and partial_rotary_factor 1.0, `dtype` instead of `torch_dtype`, a list of
# eos ids, pad_token_id, first_k_dense_replace 1 (which transformers does not read: it takes the
# dense/sparse pattern from `mlp_layer_types`, default ["dense"] + ["sparse"] * (L - 1), the
# same here), topk_method noaux_tc and no scoring_func (the router is always sigmoid), no
# auto_map, num_nextn_predict_layers 1 (the MTP layer, not in these weights). q_lora set,
# 1 shared expert, no groups, norm_topk_prob, scale 1.8, rms_norm_eps 1e-5. The head sizes keep
# GLM's relations: qk_nope_head_dim = 3 x qk_rope_head_dim (192 = 3 x 64) and v_head_dim =
# qk_nope + qk_rope (256), so the softmax scale is v_head_dim^-0.5. Unconfirmed: whether GLM's
# file sets rope_interleave (left out: transformers' default, true, interleaved pairs as in
# DeepSeek) and bos_token_id (left out). 64 routed experts, top-4 become 8, top-2.
GLM4_MOE_LITE = dict(sorted({
    "architectures": ["Glm4MoeLiteForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "dtype": "float32",
    "eos_token_id": [1, 2, 3],
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 64,
    "intermediate_size": 96,
    "kv_lora_rank": 32,
    "max_position_embeddings": 202752,
    "model_type": "glm4_moe_lite",
    "moe_intermediate_size": 32,
    "n_group": 1,
    "n_routed_experts": 8,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 4,
    "num_experts_per_tok": 2,
    "num_hidden_layers": 3,
    "num_key_value_heads": 4,
    "num_nextn_predict_layers": 1,
    "pad_token_id": 1,
    "partial_rotary_factor": 1.0,
    "q_lora_rank": 24,
    "qk_nope_head_dim": 24,
    "qk_rope_head_dim": 8,
    "rms_norm_eps": 1e-5,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "routed_scaling_factor": 1.8,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "use_cache": True,
    "v_head_dim": 32,
    "vocab_size": 256,
}.items()))

# name -> (hub config dict or None, seed)
# One long prompt through a YaRN model, past its original_max_position_embeddings (4096), so
# that YaRN's scaling is in force: v3_long_yarn's reference.safetensors holds `prompt` (I64
# [8448]), `rows` (I64: every 512th position and the last 16) and `logprobs` (F32 [rows, V]) at
# those rows alone, which keeps the file small.
LONG_PROMPT = 8448
LONG_ROWS = sorted(set(range(0, LONG_PROMPT, 512)) | set(range(LONG_PROMPT - 16, LONG_PROMPT)))

V3_LONG_YARN = dict(sorted({
    **V3_NOAUX_YARN,
    "max_position_embeddings": 16384,
    # 8 rotary frequencies, wavelengths from 6 to 20,000 positions: the ramp between beta_fast
    # and beta_slow crosses them.
    "qk_rope_head_dim": 16,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 4,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 4096,
        "type": "yarn",
    },
}.items()))

MODELS = [
    ("v2_plain", V2_PLAIN, 1001),
    ("v2_group", V2_GROUP, 1002),
    ("v3_noaux_yarn", V3_NOAUX_YARN, 1003),
    ("v3_yarn_mscale1", None, 1004),
    ("moonlight", MOONLIGHT, 1005),
    ("kimi_k2", KIMI_K2, 1006),
    ("glm4_moe_lite", GLM4_MOE_LITE, 1007),
]

# The correction bias of these models is drawn around 0, negative values included, as trained
# biases are: with n_group = 1 no group is ever masked, so HF's -inf mask and DeepSeek's 0.0
# mask cannot differ. The other models keep their non-negative bias (and their files unchanged).
CENTRED_BIAS = {"moonlight", "kimi_k2", "glm4_moe_lite"}

# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------

EMBED_STD_UNTIED = 1.0
# Tied embeddings: a large embedding dominates the residual stream and the model just repeats
# its last input token, so keep the embedding small and let the final norm weight carry the
# logit scale instead (logits std ~ 0.15 * sqrt(64) * 3 ~ 4).
EMBED_STD_TIED = 0.15
FINAL_NORM_GAIN_TIED = 3.0
LM_HEAD_GAIN = 4.0  # logits std ~ 4 for an RMS-normalised final hidden state
LINEAR_GAIN = 1.0
ROUTER_GAIN = 2.0
NORM_NOISE = 0.15


@torch.no_grad()
def reinit_weights(model, seed, centred_bias=False):
    """Overwrite every parameter (and the V3 router bias) with peaked, deterministic values."""
    g = torch.Generator().manual_seed(seed)
    tied = model.config.tie_word_embeddings

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    for name, p in sorted(model.named_parameters()):
        shape = tuple(p.shape)
        if name.endswith("norm.weight"):  # every RMSNorm (layernorm / *_layernorm / model.norm)
            v = 1.0 + NORM_NOISE * randn(shape)
            if tied and name == "model.norm.weight":
                v = v * FINAL_NORM_GAIN_TIED
        elif name == "model.embed_tokens.weight":
            v = randn(shape) * (EMBED_STD_TIED if tied else EMBED_STD_UNTIED)
        elif name == "lm_head.weight":
            v = randn(shape) * LM_HEAD_GAIN / math.sqrt(shape[1])
        elif name.endswith("mlp.gate.weight"):
            v = randn(shape) * ROUTER_GAIN / math.sqrt(shape[1])
        elif name.endswith("experts.gate_up_proj"):  # fused in memory: [E, 2I, H]
            v = randn(shape) * LINEAR_GAIN / math.sqrt(shape[2])
        elif name.endswith("experts.down_proj"):  # fused in memory: [E, H, I]
            v = randn(shape) * LINEAR_GAIN / math.sqrt(shape[2])
        elif len(shape) == 2:  # nn.Linear [out, in]
            v = randn(shape) * LINEAR_GAIN / math.sqrt(shape[1])
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")
        p.copy_(v)
    for name, b in sorted(model.named_buffers()):
        if name.endswith("e_score_correction_bias"):
            # Non-negative on purpose: HF masks dropped groups with -inf, DeepSeek's code with 0.0;
            # they agree only when every biased score is >= 0.
            # (CENTRED_BIAS models: see there.)
            shift = 0.25 if centred_bias else 0.0
            b.copy_(0.5 * torch.rand(tuple(b.shape), generator=g, dtype=torch.float32) - shift)


# ----------------------------------------------------------------------------------------------
# Reference computation
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def logits_of(model, ids):
    out = model(input_ids=ids.unsqueeze(0), use_cache=False)
    return out.logits[0].float()


@torch.no_grad()
def greedy(model, prompt):
    seq = prompt.clone()
    toks, rows, margins = [], [], []
    for _ in range(GREEDY_STEPS):
        last = logits_of(model, seq)[-1]
        top2 = torch.topk(last, 2)
        nxt = int(top2.indices[0])
        toks.append(nxt)
        rows.append(torch.log_softmax(last, dim=-1))
        margins.append(float(top2.values[0] - top2.values[1]))
        seq = torch.cat([seq, torch.tensor([nxt], dtype=torch.long)])
    return (
        torch.tensor(toks, dtype=torch.long),
        torch.stack(rows),
        torch.tensor(margins, dtype=torch.float32),
    )


V3_ROUTERS = ("DeepseekV3TopkRouter", "Glm4MoeLiteTopkRouter")
ROUTERS = ("DeepseekV2TopkRouter",) + V3_ROUTERS


class RouterGapProbe:
    """Records, in float64, how close each routing decision was to a tie (a diagnostic only)."""

    def __init__(self, model):
        self.model = model
        self.min_expert_gap = math.inf
        self.min_group_gap = math.inf
        self.handles = []
        for mod in model.modules():
            if type(mod).__name__ in ROUTERS:
                self.handles.append(mod.register_forward_hook(self.hook))

    def hook(self, mod, inputs, output):
        h = inputs[0].reshape(-1, mod.hidden_dim).double()
        logits = h @ mod.weight.double().t()
        k = mod.top_k
        E = mod.num_experts
        if type(mod).__name__ in V3_ROUTERS:
            s = logits.sigmoid() + mod.e_score_correction_bias.double()
            ng, tg = mod.num_group, mod.topk_group
            gs = s.view(-1, ng, E // ng).topk(2, dim=-1)[0].sum(-1)
        else:
            s = logits.softmax(-1)
            ng, tg = (mod.num_group, mod.topk_group) if mod.topk_method == "group_limited_greedy" else (1, 1)
            gs = s.view(-1, ng, E // ng).max(-1).values
        if tg < ng:
            gsorted = gs.sort(-1, descending=True).values
            self.min_group_gap = min(self.min_group_gap, float((gsorted[:, tg - 1] - gsorted[:, tg]).min()))
            keep = torch.zeros_like(gs).scatter_(1, gs.topk(tg, -1)[1], 1.0)
            s = s.masked_fill(keep.repeat_interleave(E // ng, dim=1) == 0, -math.inf)
        ssorted = s.sort(-1, descending=True).values
        self.min_expert_gap = min(self.min_expert_gap, float((ssorted[:, k - 1] - ssorted[:, k]).min()))

    def close(self):
        for h in self.handles:
            h.remove()


def hf_config(folder):
    """transformers' reading of folder/config.json. Kimi-K2's `kimi_k2` is not a registered
    model_type: it is read as deepseek_v3, as Moonshot tells frameworks without it to do."""
    with open(os.path.join(folder, "config.json")) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "kimi_k2":
        config = DeepseekV3Config.from_pretrained(folder)
        # The instance keeps the file's model_type, and transformers picks the per-expert <->
        # fused weight conversion by model_type: without this the experts would not load.
        config.model_type = "deepseek_v3"
        return config
    return AutoConfig.from_pretrained(folder)


def moe_layers(cfg):
    """The MoE layers as transformers decides them (GLM-4.7-Flash: from mlp_layer_types)."""
    types = getattr(cfg, "mlp_layer_types", None)
    if types is not None:
        return [i for i, t in enumerate(types) if t == "sparse"]
    return list(range(cfg.first_k_dense_replace, cfg.num_hidden_layers))


def load(folder, dtype=torch.float32, attn=ATTN, strict=True):
    model, info = AutoModelForCausalLM.from_pretrained(
        folder, config=hf_config(folder), dtype=dtype, attn_implementation=attn, output_loading_info=True
    )
    bad = {k: v for k, v in info.items() if v}
    if bad and strict:
        raise RuntimeError(f"loading {folder}: {bad}")
    return model.eval()


def check_weight_names(path, cfg):
    with safe_open(path, "pt") as f:
        names = sorted(f.keys())
        for n in names:
            assert f.get_slice(n).get_dtype() == "F32", n
    assert not any("gate_up_proj" in n for n in names), "fused expert tensor in the checkpoint"
    assert not any(n.endswith("experts.down_proj") for n in names), "fused expert tensor in the checkpoint"
    for layer in moe_layers(cfg):
        for e in range(cfg.n_routed_experts):
            for proj in ("gate_proj", "up_proj", "down_proj"):
                n = f"model.layers.{layer}.mlp.experts.{e}.{proj}.weight"
                assert n in names, f"missing {n}"
    return names


def write_model(name, hub_cfg, seed, folder):
    """Create random weights, write config.json + model.safetensors into folder."""
    torch.manual_seed(seed)
    if hub_cfg is not None:
        # Write DeepSeek's layout first and build the model from HF's reading of that file.
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(hub_cfg, f, indent=2)
            f.write("\n")
        config = hf_config(folder)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        reinit_weights(model, seed, centred_bias=name in CENTRED_BIAS)
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            shutil.copy(os.path.join(tmp, "model.safetensors"), os.path.join(folder, "model.safetensors"))
    else:
        config = v3_yarn_mscale1_config()
        model = DeepseekV3ForCausalLM(config).to(torch.float32)
        reinit_weights(model, seed)
        model.save_pretrained(folder)
        for extra in ("generation_config.json",):
            p = os.path.join(folder, extra)
            if os.path.exists(p):
                os.remove(p)
    return model


def describe_config(cfg):
    rp = cfg.rope_parameters
    return (
        f"{type(cfg).__name__}: layers={cfg.num_hidden_layers} moe layers={moe_layers(cfg)} "
        f"q_lora={cfg.q_lora_rank} kv_lora={cfg.kv_lora_rank} heads={cfg.num_attention_heads} "
        f"nope/rope/v={cfg.qk_nope_head_dim}/{cfg.qk_rope_head_dim}/{cfg.v_head_dim} "
        f"experts={cfg.n_routed_experts} top{cfg.num_experts_per_tok} groups={cfg.n_group}/{cfg.topk_group} "
        f"shared={cfg.n_shared_experts} topk_method={getattr(cfg, 'topk_method', None)} "
        f"norm_topk={cfg.norm_topk_prob} scale={cfg.routed_scaling_factor} tie={cfg.tie_word_embeddings} "
        f"eps={cfg.rms_norm_eps}\n    rope_parameters={rp}"
    )


def softmax_scale(model):
    return model.model.layers[0].self_attn.scaling


def config_layout(hub_cfg):
    if hub_cfg is None:
        return "transformers-5 save_pretrained"
    if hub_cfg["model_type"] in ("deepseek_v2", "deepseek_v3"):
        return "deepseek-hub"
    return f"{hub_cfg['model_type']} hub"


def new_folder(name, hub_cfg, seed):
    """A fresh fixtures/NAME with the model written and its weight names checked: (folder,
    names)."""
    folder = os.path.join(OUT_DIR, name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)
    write_model(name, hub_cfg, seed, folder)
    return folder, check_weight_names(os.path.join(folder, "model.safetensors"), hf_config(folder))


def build(name, hub_cfg, seed):
    folder, names = new_folder(name, hub_cfg, seed)

    # The reference comes from HF's own reading of the folder just written.
    model = load(folder)
    cfg = model.config
    V = cfg.vocab_size
    print(f"\n=== {name} ===")
    print("  " + describe_config(cfg))
    rot = model.model.rotary_emb
    print(f"  attention_scaling(cos/sin)={rot.attention_scaling!r} softmax scale={softmax_scale(model)!r} "
          f"(plain {(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim) ** -0.5!r})")
    print(f"  inv_freq={rot.inv_freq.tolist()}")

    # bf16 variants (indication of the reference's own bf16 error)
    model_bf16_cast = copy.deepcopy(model).to(torch.bfloat16)
    model_bf16_load = load(folder, dtype=torch.bfloat16)
    model_sdpa = load(folder, attn="sdpa", strict=False)

    g = torch.Generator().manual_seed(seed + 7)
    tensors = {}
    probe = RouterGapProbe(model)
    all_margins = []
    stats = {"bf16_cast": 0.0, "bf16_load": 0.0, "sdpa": 0.0, "bf16_cast_top1_agree": 0, "positions": 0}
    for k, T in enumerate(PROMPT_LENS):
        prompt = torch.randint(0, V, (T,), generator=g, dtype=torch.long)
        lp = torch.log_softmax(logits_of(model, prompt), dim=-1)
        toks, rows, margins = greedy(model, prompt)
        lp_bf16 = torch.log_softmax(logits_of(model_bf16_cast, prompt), dim=-1)
        lp_bf16_load = torch.log_softmax(logits_of(model_bf16_load, prompt), dim=-1)
        lp_sdpa = torch.log_softmax(logits_of(model_sdpa, prompt), dim=-1)
        assert torch.isfinite(lp).all() and torch.isfinite(rows).all() and torch.isfinite(lp_bf16).all()
        stats["bf16_cast"] = max(stats["bf16_cast"], float((lp_bf16 - lp).abs().max()))
        stats["bf16_load"] = max(stats["bf16_load"], float((lp_bf16_load - lp).abs().max()))
        stats["sdpa"] = max(stats["sdpa"], float((lp_sdpa - lp).abs().max()))
        stats["bf16_cast_top1_agree"] += int((lp_bf16.argmax(-1) == lp.argmax(-1)).sum())
        stats["positions"] += T
        # the greedy rows must agree with a single forward over the final sequence (causality check)
        full = torch.log_softmax(logits_of(model, torch.cat([prompt, toks[:-1]])), dim=-1)
        assert (full[T - 1:] - rows).abs().max() < 1e-4, "greedy rows disagree with a full forward"

        tensors[f"case{k}.prompt"] = prompt.contiguous()
        tensors[f"case{k}.logprobs"] = lp.contiguous()
        tensors[f"case{k}.greedy"] = toks.contiguous()
        tensors[f"case{k}.greedy_logprobs"] = rows.contiguous()
        tensors[f"case{k}.greedy_margins"] = margins.contiguous()
        tensors[f"case{k}.bf16_logprobs"] = lp_bf16.contiguous()
        all_margins.extend(margins.tolist())
        print(f"  case{k}: T={T} prompt={prompt.tolist()}")
        print(f"          greedy={toks.tolist()} margins={[round(m, 4) for m in margins.tolist()]}")
        print(f"          max top1 prob at prompt rows: median {lp.max(-1).values.exp().median():.3f}")
    probe.close()

    m = torch.tensor(all_margins)
    print(f"  greedy margins: median {m.median():.4f}  min {m.min():.4f}  "
          f"#<1e-2: {(m < 1e-2).sum().item()}  #<1e-3: {(m < 1e-3).sum().item()} of {len(m)}")
    print(f"  max |lp_bf16(model.to) - lp_f32| = {stats['bf16_cast']:.4f}; "
          f"max |lp_bf16(from_pretrained) - lp_f32| = {stats['bf16_load']:.4f}; "
          f"bf16 top1 agreement {stats['bf16_cast_top1_agree']}/{stats['positions']}")
    print(f"  max |lp_sdpa - lp_eager| (f32) = {stats['sdpa']:.2e}")
    print(f"  closest routing decision (f64): expert gap {probe.min_expert_gap:.2e}, group gap {probe.min_group_gap:.2e}")

    meta = {
        "format": "ferroseek parity reference v1",
        "model": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": ATTN,
        "dtype": "float32",
        "seed": str(seed),
        "greedy_steps": str(GREEDY_STEPS),
        "cache": "none (full forward per step)",
        "bf16_logprobs": "model.to(torch.bfloat16) of the f32 model (router weight/bias and inv_freq cast too)",
        "config_layout": config_layout(hub_cfg),
    }
    save_file(tensors, os.path.join(folder, "reference.safetensors"), metadata=meta)
    canonicalize_safetensors(os.path.join(folder, "reference.safetensors"))

    # Re-load the saved folder from scratch and check it reproduces the recorded outputs.
    del model, model_bf16_cast, model_bf16_load, model_sdpa
    again = load(folder)
    for k, _ in enumerate(PROMPT_LENS):
        lp = torch.log_softmax(logits_of(again, tensors[f"case{k}.prompt"]), dim=-1)
        d = float((lp - tensors[f"case{k}.logprobs"]).abs().max())
        assert d == 0.0 or d < 1e-6, f"{name} case{k}: reload differs by {d}"
        toks, _, _ = greedy(again, tensors[f"case{k}.prompt"])
        assert torch.equal(toks, tensors[f"case{k}.greedy"]), f"{name} case{k}: greedy differs on reload"

    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print(f"  reload check OK; folder {size / 1024:.0f} KiB; {len(names)} weight tensors")
    with open(os.path.join(folder, "config.json")) as f:
        print("  config.json:\n" + "\n".join("    " + line for line in f.read().splitlines()))
    return m


def build_long(name, hub_cfg, seed):
    """The long-prompt fixture: one prompt of LONG_PROMPT ids, log-probs at LONG_ROWS."""
    folder, _ = new_folder(name, hub_cfg, seed)
    g = torch.Generator().manual_seed(seed + 7)
    prompt = torch.randint(0, hub_cfg["vocab_size"], (LONG_PROMPT,), generator=g, dtype=torch.long)
    rows = torch.tensor(LONG_ROWS, dtype=torch.long)
    lp = {}
    for attn in (ATTN, "sdpa"):
        model = load(folder, attn=attn, strict=attn == ATTN)
        lp[attn] = torch.log_softmax(logits_of(model, prompt), dim=-1)[rows].contiguous()
        del model
    print(f"\n=== {name} ===\n  {LONG_PROMPT} positions; max |lp_sdpa - lp_eager| (f32) = "
          f"{float((lp['sdpa'] - lp[ATTN]).abs().max()):.2e}")
    meta = {
        "format": "ferroseek long-prompt reference v1",
        "model": name,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "attn_implementation": ATTN,
        "dtype": "float32",
        "seed": str(seed),
    }
    path = os.path.join(folder, "reference.safetensors")
    save_file({"prompt": prompt, "rows": rows, "logprobs": lp[ATTN]}, path, metadata=meta)
    canonicalize_safetensors(path)


LONG_MODELS = [("v3_long_yarn", V3_LONG_YARN, 1008)]


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    only = set(sys.argv[1:])
    for name, hub_cfg, seed in MODELS:
        if only and name not in only:
            continue
        build(name, hub_cfg, seed)
    for name, hub_cfg, seed in LONG_MODELS:
        if only and name not in only:
            continue
        build_long(name, hub_cfg, seed)


if __name__ == "__main__":
    main()
