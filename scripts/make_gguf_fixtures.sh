#!/usr/bin/env bash
# Converts the embedded model (models/tiny-deepseek-v3) to GGUF with
# llama.cpp's own converter, as bf16 (the checkpoint's own dtype, so the same numbers) and q8_0, into
# crates/model/tests/fixtures/gguf/. Run from the repository root; needs
# network access to PyPI (never run in CI: the outputs are committed).
#
# The converter is the convert_hf_to_gguf.py (with its gguf-py) vendored in
# the llama-cpp-python 0.3.36 sdist (llama.cpp commit 0c1e570), run in a
# throwaway venv under $WORK (default /tmp/ferroseek-gguf).
set -euo pipefail

WORK=${WORK:-/tmp/ferroseek-gguf}
OUT=crates/model/tests/fixtures/gguf
MODEL=models/tiny-deepseek-v3

mkdir -p "$WORK" "$OUT"
if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
fi
PIP="$WORK/venv/bin/pip"
# cmake and scikit-build-core only let pip read the sdist's metadata.
"$PIP" install -q numpy safetensors sentencepiece "protobuf>=4.21,<5" \
  "transformers==4.57.6" torch cmake scikit-build-core
LLAMA="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"
if [ ! -f "$LLAMA/convert_hf_to_gguf.py" ]; then
  (cd "$WORK" && PATH="$WORK/venv/bin:$PATH" "$PIP" download -q --no-deps \
    --no-build-isolation --no-binary llama-cpp-python llama-cpp-python==0.3.36 \
    && tar xzf llama_cpp_python-0.3.36.tar.gz)
fi

# The tiny model's tokenizer uses DeepSeek-V3's pre-tokenizer, but its
# vocabulary is its own, so the converter's hash lookup of the
# pre-tokenizer fails; tell it the answer.
for outtype in bf16 q8_0; do
  PYTHONPATH="$LLAMA/gguf-py:$LLAMA" "$WORK/venv/bin/python" - "$MODEL" "$OUT/tiny-deepseek-v3-$outtype.gguf" "$outtype" <<'EOF'
import sys
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
import convert_hf_to_gguf
model, out, outtype = sys.argv[1:]
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
convert_hf_to_gguf.main()
EOF
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
  PYTHONPATH="$LLAMA/gguf-py:$LLAMA" "$WORK/venv/bin/python" - "$dir" "$OUT/$name-f32.gguf" f32 <<'EOF'
import sys
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
import convert_hf_to_gguf
model, out, outtype = sys.argv[1:]
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
convert_hf_to_gguf.main()
EOF
done
ls -l "$OUT"
