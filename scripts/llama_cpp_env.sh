# Sourced by the scripts that use llama.cpp (make_gguf_fixtures.sh,
# bench_model_gguf.sh): a throwaway venv under $WORK (default
# /tmp/ferroseek-gguf) with the converter's dependencies, and the llama.cpp
# sources vendored in the llama-cpp-python 0.3.36 sdist (llama.cpp commit
# 0c1e570) in $LLAMA. Needs network access to PyPI the first time.

WORK=${WORK:-/tmp/ferroseek-gguf}
LLAMA="$WORK/llama_cpp_python-0.3.36/vendor/llama.cpp"

mkdir -p "$WORK"
if [ ! -x "$WORK/venv/bin/python" ]; then
  python3 -m venv "$WORK/venv"
fi
# cmake and scikit-build-core only let pip read the sdist's metadata.
"$WORK/venv/bin/pip" install -q numpy safetensors sentencepiece "protobuf>=4.21,<5" \
  "transformers==4.57.6" torch cmake scikit-build-core
if [ ! -f "$LLAMA/convert_hf_to_gguf.py" ]; then
  (cd "$WORK" && PATH="$WORK/venv/bin:$PATH" "$WORK/venv/bin/pip" download -q --no-deps \
    --no-build-isolation --no-binary llama-cpp-python llama-cpp-python==0.3.36 \
    && tar xzf llama_cpp_python-0.3.36.tar.gz)
fi

# convert MODEL_DIR OUT_FILE OUTTYPE: llama.cpp's convert_hf_to_gguf.py. Our
# models' tokenizers use DeepSeek-V3's pre-tokenizer over a vocabulary of
# their own, so the converter's hash lookup of the pre-tokenizer fails; the
# answer is given to it.
convert() {
  PYTHONPATH="$LLAMA/gguf-py:$LLAMA" "$WORK/venv/bin/python" - "$@" <<'PY'
import sys
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
import convert_hf_to_gguf
model, out, outtype = sys.argv[1:]
sys.argv = ["convert_hf_to_gguf.py", model, "--outtype", outtype, "--outfile", out]
convert_hf_to_gguf.main()
PY
}

# build_llama TARGET: builds one of llama.cpp's programs (llama-server,
# llama-quantize) into $WORK/build/bin, once; a few minutes with cmake.
build_llama() {
  if [ ! -x "$WORK/build/bin/$1" ]; then
    "$WORK/venv/bin/cmake" -S "$LLAMA" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
      -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF > "$WORK/cmake.log" 2>&1
    "$WORK/venv/bin/cmake" --build "$WORK/build" --target "$1" -j "$(nproc)" > "$WORK/build.log" 2>&1
  fi
}
