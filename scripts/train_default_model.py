#!/usr/bin/env python3
"""Train the embedded default model, models/arith-deepseek-v3/: a small DeepSeek-V3 that adds
and subtracts integers, reasoning digit by digit in <think>, and calls a `calculate` tool when
it is given one.

Everything is generated here, from a fixed seed, with no network:
  tokenizer.json          a byte-level BPE (1024 ids) trained with `tokenizers` on the generated
                          conversations, digits always single tokens, DeepSeek's special tokens
  tokenizer_config.json   bos/eos/pad and our own chat template
                          (scripts/arith_chat_template.jinja: DeepSeek-V3.1's format)
  config.json             DeepSeek-V3 with MLA (low-rank queries), a dense first layer, then
                          sigmoid-scored MoE layers with noaux_tc group routing, a shared expert,
                          routed_scaling_factor and YaRN
  model.safetensors       bf16 weights (the router's correction bias in F32)
  generation_config.json  greedy-friendly sampling defaults

The model is transformers' DeepseekV3ForCausalLM, trained on CPU with AdamW. transformers keeps
`e_score_correction_bias` fixed, so the loop applies DeepSeek-V3's auxiliary-loss-free update
after every step: each routed expert's bias moves by a fixed step toward balancing the load
(up when the expert got fewer tokens than the mean, down when it got more).

The skills, as the data shows them:
  * "What is 1234 + 5678?" with thinking on: a trace in <think> (one line per digit, right to
    left, with the carry or borrow and the digits written so far; a subtraction first
    compares the operands digit by digit and takes the smaller from the larger, negating
    when the second is larger), then the answer alone;
    with thinking off: the answer alone. Operands have 1 to 4 digits; results may be negative.
  * With a `calculate(expression)` tool declared: a V3.1 tool call with the expression, then,
    after the tool's result, that result as the answer.
  * Anything else: one sentence saying what it can do.

Run (from the repository root; under an hour on 2 cores: 2400 steps on every skill, then
6500 smaller steps weighted toward answers without thinking, as scripts/README.md describes;
one worker process per core shares each batch):
  <venv>/bin/python scripts/train_default_model.py [--steps N] [--out DIR]
with torch, transformers, tokenizers, safetensors and jinja2 installed.
"""

import argparse
import copy
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time

import torch
import torch.distributed as dist
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Regex, Tokenizer, models
from transformers import AutoTokenizer, DeepseekV3Config, DeepseekV3ForCausalLM, PreTrainedTokenizerFast

from deepseek_files import BOS, EOS, canonicalize_safetensors, tokenizer_config, train_bpe

transformers.logging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "arith-deepseek-v3")
TEMPLATE = os.path.join(ROOT, "scripts", "arith_chat_template.jinja")
SEED = 20261206

VOCAB_SIZE = 1024

CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=192,
    intermediate_size=512,
    moe_intermediate_size=128,
    num_hidden_layers=5,
    first_k_dense_replace=1,
    num_attention_heads=6,
    num_key_value_heads=6,
    q_lora_rank=96,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    n_routed_experts=8,
    n_shared_experts=1,
    num_experts_per_tok=2,
    n_group=4,
    topk_group=2,
    norm_topk_prob=True,
    routed_scaling_factor=2.5,
    scoring_func="sigmoid",
    topk_method="noaux_tc",
    hidden_act="silu",
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    # The longest training conversation has 350 tokens: the config claims 512, no more. YaRN
    # (factor 4 over 512 positions) shapes the rotary frequencies the model was trained with;
    # max_position_embeddings does not enter them.
    max_position_embeddings=512,
    rope_scaling={
        "type": "yarn",
        "factor": 4.0,
        "original_max_position_embeddings": 512,
        "beta_fast": 32,
        "beta_slow": 1,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
    },
    tie_word_embeddings=False,
    bos_token_id=0,
    eos_token_id=1,
    initializer_range=0.02,
    attention_bias=False,
    attention_dropout=0.0,
)

CANNED = "I can add and subtract integers. Ask me something like 1234 + 5678."
NOT_ARITH_THOUGHT = "This is not an addition or a subtraction of two integers."

# ----------------------------------------------------------------------------------------------
# Problems and their traces
# ----------------------------------------------------------------------------------------------


def operand(rng, max_digits=4):
    n = rng.randint(1, max_digits)
    return rng.randint(0 if n == 1 else 10 ** (n - 1), 10**n - 1)


def digit_lines(a, b, op):
    """One line per digit, right to left; returns (lines, digits written, carry/borrow left)."""
    n = max(len(str(a)), len(str(b)))
    sa, sb = str(a).zfill(n), str(b).zfill(n)
    lines, written, c = [], "", 0
    for k in range(n):
        x, y = int(sa[n - 1 - k]), int(sb[n - 1 - k])
        head = f"{sa[: n - k]} {op} {sb[: n - k]}: "
        if op == "+":
            s = x + y + c
            written = str(s % 10) + written
            lines.append(f"{head}{x} + {y} + {c} = {s} -> {written}, carry {s // 10}")
            c = s // 10
        else:
            d = x - y - c
            written = str(d % 10) + written
            lines.append(f"{head}{x} - {y} - {c} = {d} -> {written}, borrow {int(d < 0)}")
            c = int(d < 0)
    return lines, written, c


def compare_line(a, b):
    """Which of `a` and `b` is larger, digit by digit from the left, both zero-padded to the
    same length; returns (line, the larger or None when they are equal)."""
    n = max(len(str(a)), len(str(b)))
    sa, sb = str(a).zfill(n), str(b).zfill(n)
    steps = []
    for x, y in zip(sa, sb):
        steps.append(f"{x} {'<' if x < y else '>' if x > y else '='} {y}")
        if x != y:
            break
    larger = None if a == b else max(a, b)
    verdict = "equal" if larger is None else f"{larger} is larger"
    return f"compare {sa} and {sb}: " + ", ".join(steps) + f" -> {verdict}", larger


def trace(a, b, op):
    """The reasoning for `a op b` and the answer. A subtraction first compares the operands,
    so the digit lines always take the smaller from the larger and never need redoing."""
    lines = [f"{a} {op} {b}"]
    if op == "+":
        body, written, c = digit_lines(a, b, "+")
        lines += body
        if c:
            written = "1" + written
            lines.append(f"carry 1 -> {written}")
        answer = str(int(written))
    else:
        line, larger = compare_line(a, b)
        if larger == b:
            lines.append(f"{line}, so {a} - {b} = -({b} - {a})")
            body, written, c = digit_lines(b, a, "-")
            sign = "-"
        else:
            lines.append(line)
            body, written, c = digit_lines(a, b, "-")
            sign = ""
        assert c == 0
        lines += body
        answer = sign + str(int(written))
    assert int(answer) == (a + b if op == "+" else a - b), (a, op, b, answer)
    lines.append(f"answer: {answer}")
    return "\n".join(lines), answer


ADD_FORMS = [
    "What is {a} + {b}?", "What is {a} plus {b}?", "{a} + {b}", "{a}+{b}", "{a} + {b} = ?",
    "{a} + {b}=?", "Calculate {a} + {b}.", "Compute {a} + {b}", "What's {a} + {b}?",
    "Add {a} and {b}.", "How much is {a} + {b}?", "{a} plus {b}", "Please add {a} and {b}.",
    "what is {a}+{b}", "Sum of {a} and {b}?", "Can you add {a} and {b}?", "Work out {a} + {b}.",
]
SUB_FORMS = [
    "What is {a} - {b}?", "What is {a} minus {b}?", "{a} - {b}", "{a}-{b}", "{a} - {b} = ?",
    "{a} - {b}=?", "Calculate {a} - {b}.", "Compute {a} - {b}", "What's {a} - {b}?",
    "Subtract {b} from {a}.", "How much is {a} - {b}?", "{a} minus {b}", "Please subtract {b} from {a}.",
    "what is {a}-{b}", "Can you subtract {b} from {a}?", "Work out {a} - {b}.",
]

WORDS = (
    "apple river mountain music history science dog cat weather poem story computer language "
    "France Paris Japan moon sun ocean book film love time coffee tea football chess garden "
    "planet star train bridge city Rust Python bread school friend color winter summer"
).split()
OTHER_FORMS = [
    "Hello!", "Hi", "hello", "Hey there", "Good morning!", "Who are you?", "What can you do?",
    "How are you?", "Thanks!", "Thank you.", "Help", "What is your name?", "Tell me a joke.",
    "What time is it?", "Are you a robot?", "Bye", "?", "ok", "Explain {w}.", "What is {w}?",
    "Tell me about {w}.", "Write a poem about {w}.", "Translate '{w}' into French.",
    "What is the capital of {w}?", "Why is the {w} blue?", "Do you like {w}?",
    "Summarize the history of {w}.", "How do I cook {w}?", "What is {a} * {b}?",
    "What is {a} / {b}?", "{a} * {b}", "{a} / {b}", "What is {a} times {b}?",
    "Divide {a} by {b}.", "What is the square root of {a}?", "Is {a} a prime number?",
    "What is {a} % {b}?", "{a}^{b}", "Write a function in {w} that sorts a list.",
    "你好", "Bonjour, comment ça va ?", "¿Qué hora es?", "What is {w} + {w2}?", "{w}",
    "{w} {w2} {w3}",
]

SYSTEMS = [
    "You are a helpful assistant.", "You are a calculator.", "Answer briefly.",
    "You are a math tutor.", "Be concise.",
]

TOOL_DESCRIPTIONS = [
    "Evaluate an arithmetic expression.",
    "Evaluate an arithmetic expression and return its value.",
    "A calculator: evaluates an expression such as 12 + 7.",
    "Compute the value of a math expression.",
]
EXPR_DESCRIPTIONS = [
    "The expression to evaluate, e.g. 12 + 7", "An arithmetic expression", "The expression", None,
]


def calculate_tool(rng):
    prop = {"type": "string"}
    desc = rng.choice(EXPR_DESCRIPTIONS)
    if desc:
        prop["description"] = desc
    return {
        "type": "function",
        "function": {
            "name": "calculate",
            "description": rng.choice(TOOL_DESCRIPTIONS),
            "parameters": {"type": "object", "properties": {"expression": prop}, "required": ["expression"]},
        },
    }


def tool_call_text(expr):
    args = json.dumps({"expression": expr})
    return ("<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>calculate<｜tool▁sep｜>" + args
            + "<｜tool▁call▁end｜><｜tool▁calls▁end｜>")


def other_prompt(rng):
    w, w2, w3 = rng.sample(WORDS, 3)
    form = rng.choice(OTHER_FORMS)
    if rng.random() < 0.1:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ?!.,0123456789") for _ in range(rng.randint(1, 30)))
    return form.format(a=operand(rng), b=operand(rng), w=w, w2=w2, w3=w3)


def arith_problem(rng):
    a, b, op = operand(rng), operand(rng), rng.choice("+-")
    form = rng.choice(ADD_FORMS if op == "+" else SUB_FORMS)
    return a, b, op, form.format(a=a, b=b)


def history(rng):
    """An earlier exchange, as a client would send it back."""
    if rng.random() < 0.7:
        a, b, op, q = arith_problem(rng)
        return [{"role": "user", "content": q}, {"role": "assistant", "content": str(a + b if op == "+" else a - b)}]
    return [{"role": "user", "content": other_prompt(rng)}, {"role": "assistant", "content": CANNED}]


def example(rng, think=0.45, arith=0.72, tool=0.90, think_other=0.45):
    """(messages, tools, thinking, completion): the prompt is the template's render with the
    generation prompt (or, after a tool result, without one); the completion is what the model
    learns to write. The kinds are arithmetic below `arith`, arithmetic with the tool below
    `tool`, anything else above. Thinking is on with probability `think` for arithmetic without
    tools and `think_other` for the rest; the draws are the same whatever the two are."""
    messages = []
    if rng.random() < 0.2:
        messages.append({"role": "system", "content": rng.choice(SYSTEMS)})
    if rng.random() < 0.15:
        messages += history(rng)
    u = rng.random()
    r = rng.random()
    thinking = u < (think if r < arith else think_other)
    if r < arith:  # arithmetic, no tools
        a, b, op, q = arith_problem(rng)
        messages.append({"role": "user", "content": q})
        reasoning, answer = trace(a, b, op)
        completion = (reasoning + "</think>" if thinking else "") + answer
        return messages, None, thinking, completion
    if r < tool:  # arithmetic with the tool
        tools = [calculate_tool(rng)]
        a, b, op, q = arith_problem(rng)
        expr = f"{a} {op} {b}"
        messages.append({"role": "user", "content": q})
        if rng.random() < 0.5:
            return messages, tools, thinking, ("</think>" if thinking else "") + tool_call_text(expr)
        args = json.dumps({"expression": expr})
        # Clients send arguments as a JSON string; some send the object.
        call = {"name": "calculate", "arguments": args if rng.random() < 0.8 else {"expression": expr}}
        messages.append({"role": "assistant", "content": None,
                         "tool_calls": [{"id": "call_1", "type": "function", "function": call}]})
        value = a + b if op == "+" else a - b
        result = str(value) if rng.random() < 0.7 else json.dumps({"result": value})
        messages.append({"role": "tool", "tool_call_id": "call_1", "content": result})
        return messages, tools, thinking, str(value)
    tools = [calculate_tool(rng)] if rng.random() < 0.3 else None
    messages.append({"role": "user", "content": other_prompt(rng)})
    completion = (NOT_ARITH_THOUGHT + "</think>" if thinking else "") + CANNED
    return messages, tools, thinking, completion


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def build_tokenizer(corpus):
    # Every digit is a token of its own.
    tok = train_bpe([Regex(r"\p{N}")], corpus, VOCAB_SIZE)
    for d in "0123456789":
        assert tok.token_to_id(d) is not None
    return tok


GENERATION_CONFIG = {
    "bos_token_id": 0,
    "eos_token_id": 1,
    "do_sample": False,
    "temperature": 0.0,
    "max_new_tokens": 512,
}

# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def render(hf_tok, messages, tools, thinking, completion):
    after_tool = messages[-1]["role"] == "tool"
    prompt = hf_tok.apply_chat_template(
        messages, tools=tools, add_generation_prompt=not after_tool, tokenize=False, thinking=thinking
    )
    return prompt, completion + EOS


def encode(hf_tok, rendered):
    """Token ids of each (prompt, completion), in batches (the tokenizer's own threads)."""

    def ids(texts):
        return hf_tok(texts, add_special_tokens=False)["input_ids"]

    prompts, completions = ids([p for p, _ in rendered]), ids([c for _, c in rendered])
    # The split must be a token boundary: the joined text must encode the same way.
    for joined, p, c in zip(ids([p + c for p, c in rendered]), prompts, completions):
        assert joined == p + c
    return list(zip(prompts, completions))


def batches(samples, tokens_per_batch, rng):
    """Length-bucketed batches of about `tokens_per_batch` (padded) tokens, shuffled."""
    order = sorted(range(len(samples)), key=lambda i: len(samples[i][0]) + len(samples[i][1]))
    out, cur, longest = [], [], 0
    for i in order:
        n = len(samples[i][0]) + len(samples[i][1])
        if cur and max(longest, n) * (len(cur) + 1) > tokens_per_batch:
            out.append(cur)
            cur, longest = [], 0
        cur.append(i)
        longest = max(longest, n)
    if cur:
        out.append(cur)
    rng.shuffle(out)
    return out


def collate(samples, idx):
    longest = max(len(samples[i][0]) + len(samples[i][1]) for i in idx)
    ids = torch.full((len(idx), longest), 1, dtype=torch.long)  # pad with EOS (masked out)
    labels = torch.full((len(idx), longest), -100, dtype=torch.long)
    mask = torch.zeros((len(idx), longest), dtype=torch.long)
    for row, i in enumerate(idx):
        p, c = samples[i]
        seq = p + c
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, len(p): len(seq)] = torch.tensor(c)
        mask[row, : len(seq)] = 1
    return ids, labels, mask


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


class LoadCounter:
    """Counts the tokens each routed expert gets, per MoE layer, for the bias update."""

    def __init__(self, model):
        self.counts = {}
        self.mask = None
        self.enabled = True
        self.gates = {}
        self.handles = []
        for name, module in model.named_modules():
            if name.endswith("mlp.gate"):
                self.gates[name] = module
                self.handles.append(module.register_forward_hook(self.hook(name)))

    def hook(self, name):
        def record(module, args, output):
            if not self.enabled:
                return
            # transformers 4.x's router returns (indices, weights), 5.x's (logits, weights, indices).
            indices = output[2] if len(output) == 3 else output[0]
            if self.mask is not None:
                indices = indices[self.mask.view(-1).bool()]
            n = module.e_score_correction_bias.numel()
            self.counts[name] = torch.bincount(indices.reshape(-1), minlength=n).float()
        return record

    @torch.no_grad()
    def update_biases(self, step_size):
        for name, gate in self.gates.items():
            load = self.counts.get(name)
            if load is None:
                continue
            gate.e_score_correction_bias += step_size * torch.sign(load.mean() - load)

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def imbalance(self):
        return {n: round((c.max() / c.mean()).item(), 2) for n, c in self.counts.items()}


@torch.no_grad()
def greedy(model, hf_tok, prompts, max_new):
    """Greedy completions of `prompts` (texts), batched with left padding."""
    enc = [hf_tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
    longest = max(map(len, enc))
    ids = torch.tensor([[1] * (longest - len(e)) + e for e in enc])
    mask = torch.tensor([[0] * (longest - len(e)) + [1] * len(e) for e in enc])
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False,
                         eos_token_id=1, pad_token_id=1)
    texts = []
    for row in out[:, longest:]:
        row = row.tolist()
        if 1 in row:
            row = row[: row.index(1)]
        texts.append(hf_tok.decode(row, skip_special_tokens=False))
    return texts


def evaluate(model, hf_tok, seed, n):
    """Exact-answer rates on fresh problems: thinking on, off, and tool calls."""
    rng = random.Random(seed)
    model.eval()
    # The other workers wait meanwhile: generate on every core.
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    probs = [arith_problem(rng) for _ in range(n)]
    results = {}
    for mode in ("think", "plain", "tool"):
        prompts, want = [], []
        for a, b, op, q in probs:
            msgs = [{"role": "user", "content": q}]
            tools = [calculate_tool(rng)] if mode == "tool" else None
            prompts.append(hf_tok.apply_chat_template(msgs, tools=tools, add_generation_prompt=True,
                                                      tokenize=False, thinking=(mode == "think")))
            value = a + b if op == "+" else a - b
            want.append(tool_call_text(f"{a} {op} {b}") if mode == "tool" else str(value))
        got = []
        for i in range(0, n, 32):
            got += greedy(model, hf_tok, prompts[i: i + 32], 400 if mode == "think" else 40)
        if mode == "think":
            got = [g.split("</think>", 1)[1] if "</think>" in g else "" for g in got]
        results[mode] = sum(g.strip() == w for g, w in zip(got, want)) / n
    torch.set_num_threads(threads)
    model.train()
    return results


def train(model, samples, args, tokens_per_batch, steps, lr, warmup, data_seed, hf_tok, label, per_sample=False):
    """AdamW over length-bucketed batches of `samples` for `steps` steps (warm-up, then a
    cosine to 5% of `lr`), with the router-bias update after each step. The loss is the mean
    over the batch's completion tokens, or with `per_sample` the mean over conversations of
    each one's mean (so a 3-token answer weighs as much as a 200-token trace).

    With several workers, each takes every world-th conversation of a batch, the losses are
    scaled to their share of the whole batch's, and the gradients and the experts' loads are
    summed before the step: every worker takes the same step as one process would."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    counter = LoadCounter(model)
    model.train()
    params = list(model.parameters())
    if world > 1:  # every worker starts from worker 0's weights and router biases
        for t in params + list(model.buffers()):
            dist.broadcast(t.data, 0)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98))

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        frac = (step - warmup) / max(1, steps - warmup)
        return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))

    step, epoch = 0, 0
    data_rng = random.Random(data_seed)
    t_train = time.time()
    while step < steps:
        for idx in batches(samples, tokens_per_batch, data_rng):
            if step >= steps:
                break
            assert len(idx) >= world, "a batch too small to share among the workers"
            ids, labels, mask = collate(samples, idx[rank::world])
            counter.mask = mask
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            if per_sample:
                hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state[:, :-1]
                target = labels[:, 1:]
                counted = target != -100
                # Logits only where a label is: a conversation without thinking has a few
                # labelled tokens in twenty or more.
                logits = model.lm_head(hidden[counted]).float()
                tok_loss = torch.nn.functional.cross_entropy(logits, target[counted], reduction="none")
                per_row = torch.zeros(ids.shape[0]).index_add(0, counted.nonzero()[:, 0], tok_loss)
                loss = (per_row / counted.sum(1).clamp(min=1)).sum() / len(idx)
            else:
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                if world > 1:
                    # The mean over this worker's completion tokens, weighted by its share of
                    # the batch's (the first token of a sequence is never a label).
                    loss = loss * ((labels[:, 1:] != -100).sum().item() / sum(len(samples[i][1]) for i in idx))
            loss.backward()
            if world > 1:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                dist.all_reduce(flat)
                for p, g in zip(params, flat.split([p.numel() for p in params])):
                    p.grad = g.view_as(p)
                for name in counter.gates:
                    dist.all_reduce(counter.counts[name])
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            counter.update_biases(args.bias_step)
            step += 1
            if step % 50 == 0:
                total = loss.detach().clone()
                if world > 1:
                    dist.all_reduce(total)
                el = time.time() - t_train
                log(f"{label} step {step} epoch {epoch} loss {total.item():.4f} lr {lr_at(step):.2e} "
                    f"{el:.0f}s load max/mean {counter.imbalance()}")
            if step == steps or (args.eval_every and step % args.eval_every == 0):
                counter.enabled = False
                if rank == 0:
                    log(f"{label} eval at step {step}: {evaluate(model, hf_tok, SEED + 2, 64)}")
                barrier()
                counter.enabled = True
        epoch += 1
    counter.remove()


def log(line):
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(line, flush=True)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=2400, help="phase 1 steps")
    ap.add_argument("--samples", type=int, default=170_000, help="phase 1 conversations")
    ap.add_argument("--phase2-steps", type=int, default=6500)
    ap.add_argument("--phase2-samples", type=int, default=340_000)
    ap.add_argument("--tokens-per-batch", type=int, default=4096)
    ap.add_argument("--phase2-tokens-per-batch", type=int, default=2048)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes sharing each batch, one thread each (torch's threads gain little "
                    "on a model this small)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--phase2-lr", type=float, default=1e-3)
    ap.add_argument("--bias-step", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=0, help="also evaluate every N steps")
    ap.add_argument("--out", default=OUT)
    ap.add_argument("--resume", metavar="DIR",
                    help="skip phase 1: continue from DIR, the folder phase 1 wrote (--phase2-steps 0 "
                    "or --save-phase1)")
    ap.add_argument("--save-phase1", metavar="DIR",
                    help="also write phase 1's model to DIR, for trying phase 2 variants with --resume")
    ap.add_argument("--template-only", action="store_true",
                    help="only write the chat template into the existing tokenizer_config.json")
    args = ap.parse_args()
    if args.template_only:
        write_tokenizer_config(args.out, open(TEMPLATE, encoding="utf-8").read())
        return
    os.makedirs(args.out, exist_ok=True)
    if args.workers == 1:
        run(0, args, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.multiprocessing.spawn(run, args=(args, os.path.join(tmp, "rendezvous")), nprocs=args.workers)


def run(rank, args, rendezvous):
    """One worker's whole run; worker 0 writes the files and evaluates."""
    if rendezvous:
        dist.init_process_group("gloo", init_method="file://" + rendezvous, rank=rank, world_size=args.workers)
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(os.cpu_count() or 1)
    template = open(TEMPLATE, encoding="utf-8").read()
    random.seed(SEED)
    torch.manual_seed(SEED)
    t0 = time.time()

    if args.resume:
        hf_tok = AutoTokenizer.from_pretrained(args.resume)
        model = DeepseekV3ForCausalLM.from_pretrained(args.resume, dtype=torch.float32)
        if rank == 0:
            if os.path.abspath(args.resume) != os.path.abspath(args.out):
                shutil.copy(os.path.join(args.resume, "tokenizer.json"), args.out)
            write_tokenizer_config(args.out, template)
    else:
        rng = random.Random(SEED)
        raw = [example(rng) for _ in range(args.samples)]

        if rank == 0:
            # The tokenizer learns its merges from the rendered conversations (through a first
            # render with a throwaway tokenizer object that only carries the template).
            plain = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), bos_token=BOS, eos_token=EOS)
            plain.chat_template = template
            corpus = []
            for messages, tools, thinking, completion in raw[:20000]:
                p, c = render(plain, messages, tools, thinking, completion)
                corpus.append(p + c)
            tok = build_tokenizer(corpus)
            tok.save(os.path.join(args.out, "tokenizer.json"))
            write_tokenizer_config(args.out, template)
        barrier()
        hf_tok = AutoTokenizer.from_pretrained(args.out)

        samples = prepare(hf_tok, raw, t0)
        # transformers 5 rewrites rope_scaling in place: hand it a copy.
        model = DeepseekV3ForCausalLM(DeepseekV3Config(**copy.deepcopy(CONFIG)))
        log(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters")
        # Phase 1: every skill, thinking on in 45% of the conversations. Batches of 4k tokens:
        # 2400 of them learnt at least what 1800 of 8k did, in 28% less time, left to phase 2.
        train(model, samples, args, args.tokens_per_batch, args.steps, args.lr, 200, SEED + 1, hf_tok, "phase 1")
        # What phase 1 writes is bf16; phase 2 starts from exactly that, as --resume does.
        round_to_bf16(model)
        if args.save_phase1 and rank == 0:
            os.makedirs(args.save_phase1, exist_ok=True)
            shutil.copy(os.path.join(args.out, "tokenizer.json"), args.save_phase1)
            write_tokenizer_config(args.save_phase1, template)
            write_model(model, args.save_phase1)

    if args.phase2_steps:
        # Phase 2: mostly answers without thinking (the skill that learns slowest, and only once
        # the traces have taught the digits' places), with enough of the others to keep them:
        # thinking in 6% of the arithmetic, tools 4%, the rest 4%. Tool calls and the rest keep
        # phase 1's thinking share: with 6% of 4%, a longer phase 2 wore down the canned reply
        # with thinking on. Each conversation weighs the same: under phase 1's token mean, the
        # few answer tokens of a conversation without thinking drowned in the traces. The
        # batches are half of phase 1's: for the same tokens, more steps, and from the same
        # phase 1 far more answers right without thinking (see scripts/README.md).
        rng = random.Random(SEED + 10)
        raw = [example(rng, think=0.06, arith=0.92, tool=0.96) for _ in range(args.phase2_samples)]
        samples = prepare(hf_tok, raw, t0)
        train(model, samples, args, args.phase2_tokens_per_batch, args.phase2_steps, args.phase2_lr, 50,
              SEED + 11, hf_tok, "phase 2", per_sample=True)

    if rank == 0:
        # The weights ship in bf16: the last evaluation is of exactly those.
        round_to_bf16(model)
        log(f"final (bf16 weights): {evaluate(model, hf_tok, SEED + 2, 128)}")
        write_model(model, args.out)
        log(f"done in {time.time() - t0:.0f} s")
    barrier()
    if dist.is_initialized():
        dist.destroy_process_group()


@torch.no_grad()
def round_to_bf16(model):
    """Round the weights to what write_model stores (the router's correction bias, a buffer,
    stays F32 there too)."""
    for p in model.parameters():
        p.copy_(p.to(torch.bfloat16).to(torch.float32))


def prepare(hf_tok, raw, t0):
    samples = encode(hf_tok, [render(hf_tok, *ex) for ex in raw])
    lengths = [len(p) + len(c) for p, c in samples]
    log(f"data: {len(samples)} conversations, {sum(lengths)} tokens, longest {max(lengths)} "
        f"({time.time() - t0:.0f} s)")
    assert max(lengths) <= CONFIG["rope_scaling"]["original_max_position_embeddings"]
    return samples


def write_tokenizer_config(out, template):
    with open(os.path.join(out, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config(template, CONFIG["max_position_embeddings"]), f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_model(model, out):
    # A model read back with --resume carries our greedy generation_config.json, which
    # save_pretrained refuses (temperature without sampling); ours is written below anyway.
    model.generation_config = transformers.GenerationConfig(bos_token_id=0, eos_token_id=1)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        state = load_file(os.path.join(tmp, "model.safetensors"))
        with open(os.path.join(tmp, "config.json")) as f:
            config = json.load(f)
    assert not any("gate_up_proj" in k for k in state)
    weights = {k: v if k.endswith("e_score_correction_bias") else v.to(torch.bfloat16) for k, v in state.items()}
    path = os.path.join(out, "model.safetensors")
    save_file(weights, path, metadata={"format": "pt"})
    canonicalize_safetensors(path)
    os.chmod(path, 0o644)
    # DeepSeek's hub layout: rope_theta and rope_scaling {type: yarn} at the top level.
    config.pop("rope_parameters", None)
    # What transformers 5 adds and 4 did not write: no multi-token-prediction layer is trained.
    for key in ("num_nextn_predict_layers", "output_router_logits", "pad_token_id"):
        config.pop(key, None)
    config.update({k: CONFIG[k] for k in ("rope_theta", "rope_scaling", "max_position_embeddings")})
    config["architectures"] = ["DeepseekV3ForCausalLM"]
    config["model_type"] = "deepseek_v3"
    config["torch_dtype"] = "bfloat16"
    config.pop("dtype", None)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dict(sorted(config.items())), f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump(GENERATION_CONFIG, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    sys.exit(main())
