#!/usr/bin/env bash
# Converts the test model (models/tiny-deepseek-v3) to GGUF with
# llama.cpp's own converter, as bf16 (the checkpoint's own dtype, so the
# same numbers) and q8_0, and quantizes the bf16 file to Q4_K_M, Q5_K_M and Q2_K with
# llama.cpp's llama-quantize, into crates/model/tests/fixtures/gguf/. Run
# from the repository root; needs network access to PyPI and a C++
# compiler (never run in CI: the outputs are committed).
#
# The converter is the convert_hf_to_gguf.py (with its gguf-py) vendored in
# the llama-cpp-python 0.3.36 sdist (llama.cpp commit 0c1e570), run in a
# throwaway venv under $WORK (default /tmp/ferroseek-gguf): see
# llama_cpp_env.sh.
set -euo pipefail

OUT=crates/model/tests/fixtures/gguf
MODEL=models/tiny-deepseek-v3
source "$(dirname "$0")/llama_cpp_env.sh"
mkdir -p "$OUT"

# byte_level_tokenizer DIR: the converter needs a tokenizer, and the random
# models have none: a byte-level one of exactly their 256 tokens.
byte_level_tokenizer() {
  "$WORK/venv/bin/python" - "$1" <<'PY'
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.save(sys.argv[1] + "/tokenizer.json")
json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, open(sys.argv[1] + "/tokenizer_config.json", "w"))
PY
}

for outtype in bf16 q8_0; do
  convert "$MODEL" "$OUT/tiny-deepseek-v3-$outtype.gguf" "$outtype"
done

# Q4_K_M from llama.cpp's own quantizer, as users' files are made: Q4_K
# and Q6_K where a weight's rows are whole 256-wide super-blocks, its
# fallbacks (Q5_0, Q8_0) where they are not. The test model is 128 wide,
# which leaves K-quants almost nothing, so this one is a random DeepSeek-V3
# 256 wide (seeded; weights drawn at the scale of a trained model's, so its
# log-probs are far from uniform), kept in bf16 as the unquantized
# reference beside its Q4_K_M file.
build_llama llama-quantize
dir="$WORK/k-quant-v3"
mkdir -p "$dir"
"$WORK/venv/bin/python" - "$dir" <<'PY'
import math, sys
import torch
from transformers import DeepseekV3Config, DeepseekV3ForCausalLM
out = sys.argv[1]
torch.manual_seed(2026)
cfg = DeepseekV3Config(
    vocab_size=256, hidden_size=256, intermediate_size=256, moe_intermediate_size=256,
    num_hidden_layers=2, first_k_dense_replace=1, num_attention_heads=4, num_key_value_heads=4,
    q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=32, qk_rope_head_dim=32, v_head_dim=64,
    n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1, topk_group=1,
    norm_topk_prob=True, routed_scaling_factor=2.5, max_position_embeddings=512,
    rope_scaling=None, tie_word_embeddings=False, bos_token_id=0, eos_token_id=1)
model = DeepseekV3ForCausalLM(cfg)
with torch.no_grad():
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.15 * torch.randn(p.shape))
        elif name == "model.embed_tokens.weight":
            p.copy_(torch.randn(p.shape))
        else:
            gain = 4.0 if name == "lm_head.weight" else 2.0 if name.endswith("mlp.gate.weight") else 1.0
            p.copy_(torch.randn(p.shape) * gain / math.sqrt(p.shape[1]))
model.to(torch.bfloat16).save_pretrained(out)
PY
byte_level_tokenizer "$dir"
convert "$dir" "$OUT/k-quant-v3-bf16.gguf" bf16
"$WORK/build/bin/llama-quantize" "$OUT/k-quant-v3-bf16.gguf" "$OUT/k-quant-v3-Q4_K_M.gguf" Q4_K_M
# And Q5_K_M: Q5_K and Q6_K, with Q5_1 and Q8_0 as their fallbacks.
"$WORK/build/bin/llama-quantize" "$OUT/k-quant-v3-bf16.gguf" "$OUT/k-quant-v3-Q5_K_M.gguf" Q5_K_M
# And Q2_K: Q2_K with Q3_K and Q6_K, Q4_0 where rows are not whole
# super-blocks.
"$WORK/build/bin/llama-quantize" "$OUT/k-quant-v3-bf16.gguf" "$OUT/k-quant-v3-Q2_K.gguf" Q2_K

# The parity fixtures (crates/model/tests/fixtures/NAME: V2 and V3
# variants and the relatives Moonlight, Kimi-K2 and GLM-4.7-Flash, with
# transformers' own reference log-probs), as f32, each with a byte-level
# tokenizer. (GLM's file keeps its multi-token-prediction block count, as
# GLM-4.7-Flash's does: block_count 4, nextn_predict_layers 1.)
for name in v2_plain v2_group v3_noaux_yarn v3_yarn_mscale1 moonlight kimi_k2 glm4_moe_lite; do
  dir="$WORK/$name"
  mkdir -p "$dir"
  cp "crates/model/tests/fixtures/$name/config.json" \
    "crates/model/tests/fixtures/$name/model.safetensors" "$dir/"
  byte_level_tokenizer "$dir"
  convert "$dir" "$OUT/$name-f32.gguf" f32
done
ls -l "$OUT"
