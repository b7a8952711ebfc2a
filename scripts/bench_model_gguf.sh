#!/usr/bin/env bash
# Builds llama.cpp's `llama-server` and converts the benchmark model to a
# q8_0 GGUF with llama.cpp's own converter, for the side by side of
# `cargo bench -p ferroseek --bench long_context`:
#
#   scripts/bench_model_gguf.sh [MODEL_DIR [OUT_FILE]]
#
# MODEL_DIR defaults to target/bench-models/random-v2-lite-265m-bf16, which
# the serving and long-context benches write on their first run (with the
# test model's tokenizer). Run from the repository root; needs network
# access to PyPI the first time (see llama_cpp_env.sh; its venv brings
# cmake) and a C++ compiler. Prints the two variables the bench reads.
set -euo pipefail

MODEL=${1:-target/bench-models/random-v2-lite-265m-bf16}
source "$(dirname "$0")/llama_cpp_env.sh"
OUT=${2:-$WORK/bench-v2-lite-q8_0.gguf}

build_llama llama-server
convert "$MODEL" "$OUT" q8_0

echo "FERROSEEK_BENCH_LLAMA_SERVER=$WORK/build/bin/llama-server"
echo "FERROSEEK_BENCH_LLAMA_GGUF=$OUT"
