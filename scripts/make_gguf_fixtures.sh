#!/usr/bin/env bash
# Converts the embedded model (models/tiny-deepseek-v3) to GGUF with
# llama.cpp's own converter, as bf16 (the checkpoint's own dtype, so the same numbers) and q8_0, into
# crates/model/tests/fixtures/gguf/. Run from the repository root; needs
# network access to PyPI (never run in CI: the outputs are committed).
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

for outtype in bf16 q8_0; do
  convert "$MODEL" "$OUT/tiny-deepseek-v3-$outtype.gguf" "$outtype"
done

# The four parity fixtures (crates/model/tests/fixtures/NAME: V2 and V3
# variants with transformers' own reference log-probs), as f32. They have no
# tokenizer, which the converter needs: give each a byte-level one of
# exactly their 256 tokens.
for name in v2_plain v2_group v3_noaux_yarn v3_yarn_mscale1; do
  dir="$WORK/$name"
  mkdir -p "$dir"
  cp "crates/model/tests/fixtures/$name/config.json" \
    "crates/model/tests/fixtures/$name/model.safetensors" "$dir/"
  "$WORK/venv/bin/python" - "$dir" <<'EOF'
import json, sys
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
tok.decoder = decoders.ByteLevel()
tok.save(sys.argv[1] + "/tokenizer.json")
json.dump({"tokenizer_class": "PreTrainedTokenizerFast"}, open(sys.argv[1] + "/tokenizer_config.json", "w"))
EOF
  convert "$dir" "$OUT/$name-f32.gguf" f32
done
ls -l "$OUT"
