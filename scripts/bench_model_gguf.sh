#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and `llama-quantize` and writes the
# benchmark model as GGUF files with llama.cpp's own tools: q8_0 from its
# converter, Q4_K_M and Q5_K_M from llama-quantize (of a bf16 conversion), for
# `cargo bench -p ferroseek --bench long_context` and `--bench gguf`:
#
#   scripts/bench_model_gguf.sh [MODEL_DIR [OUT_PREFIX]]
#
# MODEL_DIR defaults to target/bench-models/random-v2-lite-q-lora-bf16,
# which those benches write on their first run (with the test model's
# tokenizer); llama.cpp reads V2-Lite's layout without low-rank queries
# only at its own depth. Run from the repository root; needs network access
# to PyPI the first time (see llama_cpp_env.sh; its venv brings cmake) and a
# C++ compiler. Prints the variables the benches read.
set -euo pipefail

MODEL=${1:-target/bench-models/random-v2-lite-q-lora-bf16}
source "$(dirname "$0")/llama_cpp_env.sh"
OUT=${2:-$WORK/bench-q-lora}

build_llama llama-server
build_llama llama-quantize
convert "$MODEL" "$OUT-q8_0.gguf" q8_0
convert "$MODEL" "$OUT-bf16.gguf" bf16
for kind in Q4_K_M Q5_K_M; do
  "$WORK/build/bin/llama-quantize" "$OUT-bf16.gguf" "$OUT-$kind.gguf" $kind > "$WORK/quantize.log" 2>&1
done
rm "$OUT-bf16.gguf"

echo "FERROSEEK_BENCH_LLAMA_SERVER=$WORK/build/bin/llama-server"
echo "FERROSEEK_BENCH_LLAMA_GGUF=$OUT-q8_0.gguf"
echo "FERROSEEK_BENCH_GGUF_Q8_0=$OUT-q8_0.gguf"
echo "FERROSEEK_BENCH_GGUF_Q4_K_M=$OUT-Q4_K_M.gguf"
echo "FERROSEEK_BENCH_GGUF_Q5_K_M=$OUT-Q5_K_M.gguf"
