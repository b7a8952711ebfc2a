#!/usr/bin/env python3
"""Write the embedded default model, models/tiny-deepseek-v3/, in Hugging Face layout.

A tiny random DeepSeek-V3 (sigmoid router, noaux_tc, q_lora, YaRN) whose folder looks like a
real DeepSeek checkpoint:
  config.json             DeepSeek's own hub layout (rope_theta + rope_scaling {type: yarn})
  model.safetensors       bf16 weights under DeepSeek's tensor names; e_score_correction_bias
                          stays F32 as in DeepSeek's releases
  tokenizer.json          a real byte-level BPE (~4000 tokens) trained here with the
                          `tokenizers` library, carrying DeepSeek's special tokens
  tokenizer_config.json   bos/eos/pad, add_bos_token, and our own DeepSeek-style chat template
                          (scripts/default_chat_template.jinja, V3.1's token conventions)
  generation_config.json  bos/eos ids and DeepSeek's sampling defaults

The BPE corpus is every docstring of the Python standard library that runs this script,
taken from the source files in sorted path order (no imports), so it needs no network. The
same Python minor version gives the same tokenizer.

Then the folder is checked with `tokenizers`, and with transformers (AutoTokenizer,
apply_chat_template, AutoModelForCausalLM.generate), including Unicode round trips.

Run (from the repository root):
  <venv>/bin/python scripts/make_default_model.py [--chat-template PATH]
"""

import argparse
import ast
import json
import math
import os
import random
import shutil
import sys
import sysconfig
import tempfile

import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from deepseek_files import BOS, CHAT_TOKENS, EOS, PAD, canonicalize_safetensors, tokenizer_config, train_bpe

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)
transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "tiny-deepseek-v3")
# Written for this project (the real DeepSeek templates in ../shared are test data, not to be
# copied into the repository).
DEFAULT_TEMPLATE = os.path.join(ROOT, "scripts", "default_chat_template.jinja")
SEED = 20250101

TOKENIZER_SIZE = 4000  # BPE vocabulary (with BOS/EOS/PAD at 0..2) plus CHAT_TOKENS at the end
VOCAB_SIZE = 4032  # config vocab_size: the tokenizer size rounded up to a multiple of 64

CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 0,
    "eos_token_id": 1,
    "ep_size": 1,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 128,
    "initializer_range": 0.02,
    "intermediate_size": 256,
    "kv_lora_rank": 64,
    "max_position_embeddings": 4096,
    "model_type": "deepseek_v3",
    "moe_intermediate_size": 64,
    "moe_layer_freq": 1,
    "n_group": 4,
    "n_routed_experts": 16,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 8,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 4,
    "num_key_value_heads": 8,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": 64,
    "qk_nope_head_dim": 32,
    "qk_rope_head_dim": 16,
    "rms_norm_eps": 1e-06,
    "rope_scaling": {
        "beta_fast": 32,
        "beta_slow": 1,
        "factor": 4,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "original_max_position_embeddings": 1024,
        "type": "yarn",
    },
    "rope_theta": 10000,
    "routed_scaling_factor": 2.5,
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 2,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.33.1",
    "use_cache": True,
    "v_head_dim": 32,
    "vocab_size": VOCAB_SIZE,
}

# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------

SKIP_DIRS = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "turtledemo", "__pycache__"}


def stdlib_docstrings():
    """Every module/class/function docstring of the stdlib, in sorted file order."""
    base = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        files += [os.path.join(dirpath, f) for f in filenames if f.endswith(".py")]
    texts = []
    for path in sorted(files, key=lambda p: os.path.relpath(p, base)):
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read())
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=True)
                if doc:
                    texts.append(doc)
    return texts


def build_tokenizer():
    # DeepSeek-style pre-tokenisation: numbers in groups of up to 3 digits, CJK runs (literal
    # characters U+4E00-U+9FA5, U+3040-U+309F, U+30A0-U+30FF, not \u escapes), then the word split.
    corpus = stdlib_docstrings()
    print(f"corpus: {len(corpus)} docstrings, {sum(map(len, corpus))} characters "
          f"(Python {sys.version.split()[0]} stdlib)")
    splits = [Regex(r"\p{N}{1,3}"), Regex("[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+")]
    return train_bpe(splits, corpus, TOKENIZER_SIZE)


GENERATION_CONFIG = {
    "_from_model_config": True,
    "bos_token_id": 0,
    "do_sample": True,
    "eos_token_id": 1,
    "temperature": 0.6,
    "top_p": 0.95,
    "transformers_version": "4.46.3",
}

# ----------------------------------------------------------------------------------------------
# Weights
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def reinit_weights(model, seed):
    """Peaked random weights (HF's std-0.02 init gives near-uniform logits)."""
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    for name, p in sorted(model.named_parameters()):
        shape = tuple(p.shape)
        if name.endswith("norm.weight"):
            v = 1.0 + 0.15 * randn(shape)
        elif name == "model.embed_tokens.weight":
            v = randn(shape)
        elif name == "lm_head.weight":
            v = randn(shape) * 4.0 / math.sqrt(shape[1])
        elif name.endswith("mlp.gate.weight"):
            v = randn(shape) * 2.0 / math.sqrt(shape[1])
        elif name.endswith("experts.gate_up_proj") or name.endswith("experts.down_proj"):
            v = randn(shape) / math.sqrt(shape[2])  # fused in memory: [E, out, in]
        elif len(shape) == 2:
            v = randn(shape) / math.sqrt(shape[1])
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")
        p.copy_(v)
    for name, b in sorted(model.named_buffers()):
        if name.endswith("e_score_correction_bias"):
            b.copy_(0.5 * torch.rand(tuple(b.shape), generator=g, dtype=torch.float32))


def write_weights(folder):
    torch.manual_seed(SEED)
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    reinit_weights(model, SEED)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)  # splits the fused experts back into per-expert names
        state = load_file(os.path.join(tmp, "model.safetensors"))
    assert not any("gate_up_proj" in k for k in state)
    out = {}
    for k, v in state.items():
        # DeepSeek ships the router bias in F32 inside otherwise-bf16 checkpoints.
        out[k] = v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16)
    path = os.path.join(folder, "model.safetensors")
    save_file(out, path, metadata={"format": "pt"})
    canonicalize_safetensors(path)
    return len(out)


# ----------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------


def random_unicode_strings(rng, n):
    ranges = [
        (0x20, 0x7E),  # ASCII
        (0xA0, 0x24F),  # Latin-1 / Latin Extended
        (0x300, 0x36F),  # combining marks
        (0x391, 0x3C9),  # Greek
        (0x400, 0x4FF),  # Cyrillic
        (0x5D0, 0x5EA),  # Hebrew
        (0x620, 0x64A),  # Arabic
        (0x900, 0x97F),  # Devanagari
        (0xE00, 0xE5B),  # Thai
        (0x3040, 0x30FF),  # Hiragana / Katakana
        (0x4E00, 0x9FFF),  # CJK
        (0xAC00, 0xD7A3),  # Hangul
        (0x1F300, 0x1FAFF),  # emoji
        (0x10000, 0x1007F),  # Linear B (4-byte UTF-8)
    ]
    specials = ["\n", "\t", "  ", "\r\n", "\u200d", "\ufe0f", "\u00a0", "👩‍👩‍👧", "🇫🇷", "é", "é"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, 40)):
            if rng.random() < 0.15:
                parts.append(rng.choice(specials))
            else:
                lo, hi = rng.choice(ranges)
                parts.append(chr(rng.randint(lo, hi)))
        out.append("".join(parts))
    return out


A = "<｜Assistant｜>"
U = "<｜User｜>"
TOOL_INTRO = (
    "## Tools\n"
    "You can call the functions below. Write a call as "
    "<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>NAME<｜tool▁sep｜>ARGUMENTS<｜tool▁call▁end｜><｜tool▁calls▁end｜>, "
    "with the arguments as a JSON object; several calls go one after another between "
    "<｜tool▁calls▁begin｜> and <｜tool▁calls▁end｜>.\n"
)


def check_chat_template(hf_tok):
    """scripts/default_chat_template.jinja renders what it is meant to, under transformers."""
    weather = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
    weather_json = json.dumps(weather, ensure_ascii=False)
    multi_turn = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>easy</think>4", "reasoning_content": "dropped"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ]
    multi_turn_text = (
        f"{BOS}You are a helpful assistant.{U}What is 2+2?{A}</think>4{EOS}{U}And 3+3? 🙂{A}"
    )
    tool_turns = [
        {"role": "user", "content": "Weather in Paris and Zürich?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18°C"},
        {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "12°C"}]},
    ]
    tool_calls_text = (
        f"{U}Weather in Paris and Zürich?{A}</think><｜tool▁calls▁begin｜>"
        '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Paris"}<｜tool▁call▁end｜>'
        '<｜tool▁call▁begin｜>get_weather<｜tool▁sep｜>{"city": "Zürich"}<｜tool▁call▁end｜>'
        f"<｜tool▁calls▁end｜>{EOS}"
        "<｜tool▁output▁begin｜>18°C<｜tool▁output▁end｜><｜tool▁output▁begin｜>12°C<｜tool▁output▁end｜>"
    )
    # (name, messages, tools, add_generation_prompt, extra variables, expected text)
    cases = [
        ("user only", [{"role": "user", "content": "Hi"}], None, False, {}, f"{BOS}{U}Hi"),
        (
            "system + user",
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            None, True, {}, f"{BOS}Be brief.{U}Hi{A}</think>",
        ),
        (
            "system + developer, list-of-parts content",
            [
                {"role": "system", "content": [{"type": "text", "text": "Be "}, {"type": "text", "text": "brief."}]},
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": [{"type": "text", "text": "Describe "}, {"type": "image_url"},
                                             {"type": "text", "text": "this."}]},
            ],
            None, True, {"thinking": False}, f"{BOS}Be brief.\n\nAnswer in French.{U}Describe this.{A}</think>",
        ),
        ("multi-turn, thinking off", multi_turn, None, True, {}, multi_turn_text + "</think>"),
        ("multi-turn, thinking", multi_turn, None, True, {"thinking": True}, multi_turn_text + "<think>"),
        ("multi-turn, enable_thinking", multi_turn, None, True, {"enable_thinking": True}, multi_turn_text + "<think>"),
        (
            "multi-turn, ends with the assistant",
            multi_turn[:3], None, False, {},
            f"{BOS}You are a helpful assistant.{U}What is 2+2?{A}</think>4{EOS}",
        ),
        (
            "tool calls + results, reasoning effort",
            tool_turns, [weather], True, {"thinking": True, "reasoning_effort": "high"},
            f"{BOS}Reasoning effort: high\n\n{TOOL_INTRO}\n{weather_json}" + tool_calls_text + f"{A}<think>",
        ),
        (
            "tool calls + results + answer, with a system prompt",
            [{"role": "system", "content": "You are a weather bot."}, *tool_turns,
             {"role": "assistant", "content": "Sunny in Paris, <b>cooler</b> in Zürich."}],
            [weather, weather], False, {},
            f"{BOS}You are a weather bot.\n\n{TOOL_INTRO}\n{weather_json}\n{weather_json}" + tool_calls_text
            + f"{A}</think>Sunny in Paris, <b>cooler</b> in Zürich.{EOS}",
        ),
        (
            "content next to a tool call",
            [{"role": "user", "content": "Go"},
             {"role": "assistant", "content": "Searching.",
              "tool_calls": [{"type": "function", "function": {"name": "s", "arguments": "{}"}}]}],
            None, False, {},
            f"{BOS}{U}Go{A}</think>Searching.<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>s<｜tool▁sep｜>{{}}"
            f"<｜tool▁call▁end｜><｜tool▁calls▁end｜>{EOS}",
        ),
    ]
    for name, msgs, tools, gen, kwargs, expected in cases:
        text = hf_tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=gen, tokenize=False, **kwargs)
        assert text == expected, f"{name}:\n  got      {text!r}\n  expected {expected!r}"
        print(f"  chat template, {name}: {text!r}")
    try:
        hf_tok.apply_chat_template([{"role": "robot", "content": "x"}], tokenize=False)
    except Exception as e:  # jinja2's TemplateError, as HF raises it
        assert "Unknown message role: robot" in str(e), e
    else:
        raise AssertionError("an unknown role must raise")
    print(f"chat template OK on {len(cases)} conversations and an unknown role")


def check(folder, check_template):
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    hf_tok = AutoTokenizer.from_pretrained(folder)
    rng = random.Random(SEED)
    samples = random_unicode_strings(rng, 300) + [
        "Hello, world! 12345 numbers, 3.14159",
        "中文测试：你好，世界。日本語のテキストとカタカナ。",
        "emoji 😀🎉 family 👨‍👩‍👧‍👦 flag 🇯🇵 and e\u0301 combining",
        "def f(x):\n    return x ** 2  # comment\n\n\n",
        "   leading and trailing spaces   ",
        "text with <｜User｜> and <think>tokens</think> inside",
    ]
    for s in samples:
        ids = tok.encode(s, add_special_tokens=False).ids
        assert tok.decode(ids, skip_special_tokens=False) == s, repr(s)
        hf_ids = hf_tok.encode(s, add_special_tokens=False)
        assert hf_ids == ids, (s, hf_ids, ids)
        assert hf_tok.decode(hf_ids) == s, repr(s)
    print(f"unicode round trip OK on {len(samples)} strings (tokenizers and transformers)")

    ids = tok.encode("Hello world").ids
    assert ids[0] == 0, "TemplateProcessing must prepend BOS"
    for t in CHAT_TOKENS:
        assert len(tok.encode(t, add_special_tokens=False).ids) == 1, t
    kept = tok.decode([tok.token_to_id(t) for t in [BOS, "<｜User｜>", "<think>", EOS]], skip_special_tokens=True)
    assert kept == "<｜User｜><think>", kept
    print("sample encodings:")
    for s in ["Return the number of items in a container.", "中文 😀 e\u0301"]:
        enc = tok.encode(s, add_special_tokens=False)
        print(f"  {s!r} -> {enc.tokens}")

    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "<think>easy</think>4"},
        {"role": "user", "content": "And 3+3? 🙂"},
    ]
    text = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    print(f"chat template render: {text!r}")
    if check_template:
        check_chat_template(hf_tok)
    else:
        print("chat template: not the default one, its renders are not checked")
    ids = hf_tok.encode(text, add_special_tokens=False)
    assert ids[0] == 0 and ids.count(0) == 1

    for dtype in (torch.bfloat16, torch.float32):
        model, info = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        assert not any(info.values()), info
        bias = model.model.layers[1].mlp.gate.e_score_correction_bias
        assert bias.dtype == torch.float32
        inp = torch.tensor([ids])
        out = model.generate(inp, max_new_tokens=16, do_sample=False, attention_mask=torch.ones_like(inp))
        new = out[0, len(ids):].tolist()
        print(f"generate ({dtype}): {new}")
        print(f"  decoded: {hf_tok.decode(new)!r}")
        with torch.no_grad():
            lp = model(inp).logits[0, -1].float().log_softmax(-1)
        assert torch.isfinite(lp).all()
        top = lp.topk(2).values
        print(f"  last-position top1 prob {top[0].exp():.3f}, margin {top[0] - top[1]:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chat-template", default=DEFAULT_TEMPLATE,
                    help="the Jinja chat template to embed (default: scripts/default_chat_template.jinja)")
    args = ap.parse_args()
    with open(args.chat_template, encoding="utf-8") as f:
        chat_template = f.read()

    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)

    tok = build_tokenizer()
    tok.save(os.path.join(OUT, "tokenizer.json"))
    assert tok.get_vocab_size() <= VOCAB_SIZE

    def dump(name, obj):
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    dump("config.json", CONFIG)
    dump("tokenizer_config.json", tokenizer_config(chat_template, CONFIG["max_position_embeddings"]))
    dump("generation_config.json", GENERATION_CONFIG)
    n = write_weights(OUT)

    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
    print(f"wrote {OUT}: {n} tensors; " + ", ".join(f"{k} {v / 1024:.0f} KiB" for k, v in sizes.items())
          + f"; total {sum(sizes.values()) / 2**20:.2f} MiB")
    check(OUT, check_template=os.path.samefile(args.chat_template, DEFAULT_TEMPLATE))


if __name__ == "__main__":
    main()
