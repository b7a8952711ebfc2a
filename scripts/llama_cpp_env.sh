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
# answer is given to it. GLM's vocabulary step looks up GLM's own special
# tokens by name ([gMASK], <|user|>, ...), which a test model's tokenizer
# lacks: its vocabulary is written as the plain gpt2 one the others get, and
# the config's three eos ids become eos, end of turn and end of message, as
# GLM's step makes <|endoftext|>, <|user|> and <|observation|> (the order
# of GLM-4.7-Flash's eos_token_id list).
convert() {
  PYTHONPATH="$LLAMA/gguf-py:$LLAMA" "$WORK/venv/bin/python" - "$@" <<'PY'
import sys
import conversion.base as base
import conversion.glm as glm
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "deepseek-v3"
def glm_vocab(self):
    self._set_vocab_gpt2()
    eos, eot, eom = self.hparams["eos_token_id"]
    self.gguf_writer.add_eos_token_id(eos)
    self.gguf_writer.add_eot_token_id(eot)
    self.gguf_writer.add_eom_token_id(eom)
glm.Glm4MoeLiteModel.set_vocab = glm_vocab
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
