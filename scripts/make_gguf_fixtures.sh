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
ls -l "$OUT"
