#!/usr/bin/env python3
"""Make a small tiktoken-format tokenizer (as Kimi-K2 and Moonlight ship theirs) and what
the `tiktoken` package does with it, for crates/engine/tests/tiktoken.rs.

Writes crates/engine/tests/fixtures/tiktoken/:

* `tiktoken.model`: a byte-level BPE rank file (`<base64 bytes> <rank>` per line). The 256
  single bytes take ranks 0-255 in a shuffled order (so that a loader that confuses a
  byte with its rank fails), then come the merges that a small BPE written here learns
  on a fixed multilingual text (English, code, Chinese, Japanese, Korean, emoji, numbers
  and seeded random words), in the order it learns them;
* `tokenizer_config.json` shaped like Kimi-K2's: `added_tokens_decoder` lists Kimi's named
  special tokens at Kimi's offsets from the end of the ranks (with Kimi's gaps, which a
  loader fills with `<|reserved_token_{id}|>`), `bos_token` `[BOS]`, `eos_token` `[EOS]`;
* `expected.json`: for a varied corpus, `tiktoken.Encoding(pat_str=KIMI_PATTERN, ...)`'s
  `encode(text, allowed_special="all")` (as Kimi's `TikTokenTokenizer.encode` calls it),
  and the decoding of those ids with and without the special ones.

When transformers and tokenizers are installed too, the script also builds transformers'
`TikTokenConverter` on the file with the same pattern and checks that it agrees with
tiktoken on every text (tokenizers' Python build splits with Oniguruma, tiktoken with
fancy-regex, ferroseek with fancy-regex).

Deterministic (fixed seeds, no clock, no network). From the repository root:

    python3 -m venv .venv && .venv/bin/pip install tiktoken   # transformers tokenizers: optional
    .venv/bin/python scripts/make_tiktoken_fixture.py
"""

import base64
import collections
import json
import os
import random
import re
import sys
from pathlib import Path

os.environ["TIKTOKEN_CACHE_DIR"] = ""  # tiktoken caches even local rank files by path

import tiktoken  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "crates/engine/tests/fixtures/tiktoken"
MERGES = 3000
SEED = 18

# Kimi-K2's / Moonlight's `pat_str` (tokenization_kimi.py), the same string as
# KIMI_PATTERN in crates/engine/src/tokenizer/tiktoken.rs.
KIMI_PATTERN = "|".join(
    [
        r"""[\p{Han}]+""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)

# Kimi-K2's named special tokens, as offsets from the first id after the ranks
# (163584 in the real file); the ids between are reserved tokens.
KIMI_SPECIALS = {
    0: "[BOS]",
    1: "[EOS]",
    2: "<|im_end|>",
    3: "<|im_user|>",
    4: "<|im_assistant|>",
    6: "<|start_header_id|>",
    7: "<|end_header_id|>",
    9: "[EOT]",
    10: "<|im_system|>",
    11: "<|tool_calls_section_begin|>",
    12: "<|tool_calls_section_end|>",
    13: "<|tool_call_begin|>",
    14: "<|tool_call_argument_begin|>",
    15: "<|tool_call_end|>",
    17: "<|im_middle|>",
    254: "[UNK]",
    255: "[PAD]",
}
NUM_RESERVED = 256

TRAINING_TEXT = """
The quick brown fox jumps over the lazy dog. A tokenizer turns text into numbers, and a
model turns numbers into more numbers; the server turns them back into text for the client.
Mixture-of-experts models route every token to a few experts, and multi-head latent attention
keeps one small latent row per token and layer in the cache. It's what they'll do, isn't it?
We've seen THE SAME WORDS IN CAPITALS and in camelCase, PascalCase and snake_case too.

fn main() {
    let numbers: Vec<u32> = (0..100).filter(|n| n % 3 == 0).collect();
    for (i, n) in numbers.iter().enumerate() {
        println!("{i}: {n}");
    }
}

def tokenize(text: str) -> list[int]:
    \"\"\"Return the ids of text.\"\"\"
    return [ord(c) for c in text if not c.isspace()]

class Server:
    def __init__(self, host="127.0.0.1", port=8000):
        self.host, self.port = host, port

人工智能是计算机科学的一个分支，它企图了解智能的实质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。
该领域的研究包括机器人、语言识别、图像识别、自然语言处理和专家系统等。大型语言模型在中文和英文上都有很好的表现。
今天天气很好，我们去公园散步吧。北京是中国的首都，上海是最大的城市。
日本語の文章も少し入れておきます。東京は日本の首都です。カタカナとひらがなを混ぜて書きます。
한국어 문장도 조금 넣습니다. 서울은 한국의 수도입니다. 안녕하세요, 만나서 반갑습니다.
Привет, как дела? Всё хорошо, спасибо. Ελληνικά γράμματα. مرحبا بالعالم. שלום עולם.
Emoji: 😀 😂 👍 🎉 🚀 ❤️ 👨‍👩‍👧 🇫🇷 — and symbols: © ® ™ € £ ¥ § ¶ • … ≤ ≥ ≠ ∞.
Numbers: 0 1 2 3 42 365 1024 2048 65536 3.14159 2.71828 1,000,000 2024-06-30 12:34:56.
"""

LATIN_SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "sh", "ch", "qu", "ing", "tion", "er"]
HAN = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长知民样现分将外但身些与高意进把法此实回二理美点月明其种声全工己话儿者向情部正名定女问力机给等几很业最间新什打便位因重被走电四第门相次东政海口使教西再平真听世气信北少关并内加化由却代军产入先山五太水万市眼体别处总才场师书比住员九笑性通目华报立马命张活难神数件安表原车白应路期叫死常提感金何更反合放做系计或司利受光王果亲界及今京务制解各任至清物台象记边共风战干接它许八特觉望直服毛林题建南度统色字请交爱让认算论百吃义科怎元社术结六功指思非流每青管夫连远资队跟带花快条院变联言权往展该领深近"


def training_text(rng: random.Random) -> str:
    """The fixed text plus seeded random words in four scripts, Zipf-like in frequency."""
    words = []
    for _ in range(3000):
        kind = rng.random()
        if kind < 0.55:
            word = "".join(rng.choice(LATIN_SYLLABLES) for _ in range(rng.randint(1, 4)))
            word = word.capitalize() if rng.random() < 0.2 else word
        elif kind < 0.8:
            word = "".join(rng.choice(HAN[: rng.randint(20, len(HAN))]) for _ in range(rng.randint(1, 4)))
        elif kind < 0.92:
            word = "".join(chr(0xAC00 + rng.randrange(0, 600)) for _ in range(rng.randint(1, 3)))
        else:
            word = str(rng.randrange(0, 10 ** rng.randint(1, 5)))
        words.append(word)
    ranked = sorted(set(words))
    rng.shuffle(ranked)
    stream = [ranked[min(int(rng.paretovariate(1.1)) - 1, len(ranked) - 1)] for _ in range(60000)]
    return TRAINING_TEXT + " ".join(stream) + "\n" + " ".join(ranked)


def train_bpe(text: str, merges: int) -> list[bytes]:
    """Tokens learned by byte-pair merging inside words, most frequent pair first."""
    # A plain split for training: which merges get learned does not need Kimi's regex.
    pieces = re.findall(r" ?[^\W\d_]+| ?\d{1,3}| ?[^\s\w]+|\s+", text)
    words = collections.Counter(tuple(bytes([b]) for b in p.encode()) for p in pieces)
    words = [[list(w), n] for w, n in words.items()]
    learned = []
    for _ in range(merges):
        pairs = collections.Counter()
        for word, n in words:
            for pair in zip(word, word[1:]):
                pairs[pair] += n
        if not pairs:
            break
        (left, right), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merged = left + right
        learned.append(merged)
        for entry in words:
            word = entry[0]
            i, out = 0, []
            while i < len(word):
                if i + 1 < len(word) and word[i] == left and word[i + 1] == right:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            entry[0] = out
    return learned


CORPUS = [
    "Hello, world! This is a test.",
    "",
    "   \n\t ",
    'fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!("{x:?}");\n}\n',
    "def f(a, b=2):\n\tif a  >  b:\n\t\treturn a**b  # power\n\treturn None\n",
    "中文English混合 CamelCase don't",
    "我爱北京天安门，天安门上太阳升。人工智能的研究",
    "iPhone15Pro价格是8999元，比iPhone14贵了1000元。",
    "日本語のテキストとカタカナ、ひらがな。東京タワー",
    "안녕하세요 세계! 서울은 한국의 수도입니다.",
    "Привет мир مرحبا שלום Ελληνικά",
    "1234567890 3.14159 1,000,000 ２０２４年 ①②③ 12:34:56",
    "👍🏽 👨‍👩‍👧‍👦 🇯🇵🇫🇷 ❤️ 😀😂🚀",
    "a  b   c\t\td\n\n\n  e \r\n f   \n",
    "I'M HERE, Don'T they'll we've She's IT'S o'clock",
    "e\u0301 cafe\u0301 café naïve Ångström ǅungla",
    "\u3000全角スペース\u3000と full-width ＡＢＣ ｄｅｆ",
    "x" * 60 + " " + "-" * 40 + "\n" + "=" * 33,
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "[BOS]Once upon a time[EOS]",
    "<|im_system|>system<|im_middle|>You are Kimi.<|im_end|><|im_user|>user<|im_middle|>Hi there<|im_end|><|im_assistant|>assistant<|im_middle|>",
    "<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{\"city\": \"北京\"}<|tool_call_end|><|tool_calls_section_end|>",
    "a <|im_en|> b <|im_end c|> [BOS [EOS]] <|im_end|><|im_end|>",
    "reserved: <|reserved_token_{first_reserved}|> and [UNK][PAD]",
    "Tabs\tand\ttrailing spaces   ",
    "  leading spaces and 中文 after spaces   中文",
    "Ｈｅｌｌｏ，ｗｏｒｌｄ！「引用」『二重』【括弧】",
    "naïve résumé coöperate — “quotes” ‘single’ «guillemets»",
]


def main() -> int:
    rng = random.Random(SEED)
    byte_order = list(range(256))
    rng.shuffle(byte_order)
    tokens = [bytes([b]) for b in byte_order] + train_bpe(training_text(rng), MERGES)
    assert len(set(tokens)) == len(tokens)
    ranks = {token: rank for rank, token in enumerate(tokens)}
    n = len(ranks)

    names = {n + offset: name for offset, name in KIMI_SPECIALS.items()}
    specials = {names.get(i, f"<|reserved_token_{i}|>"): i for i in range(n, n + NUM_RESERVED)}
    enc = tiktoken.Encoding("ferroseek-kimi-fixture", pat_str=KIMI_PATTERN, mergeable_ranks=ranks, special_tokens=specials)
    special_ids = set(specials.values())

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "tiktoken.model", "w") as f:
        for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
            f.write(f"{base64.b64encode(token).decode()} {rank}\n")

    config = {
        "added_tokens_decoder": {
            str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}
            for i, name in sorted(names.items())
        },
        "additional_special_tokens": [name for _, name in sorted(names.items()) if name.startswith("<|")],
        "auto_map": {"AutoTokenizer": ["tokenization_kimi.TikTokenTokenizer", None]},
        "bos_token": "[BOS]",
        "clean_up_tokenization_spaces": False,
        "eos_token": "[EOS]",
        "extra_special_tokens": {},
        "model_max_length": 1048576,
        "pad_token": "[PAD]",
        "tokenizer_class": "TikTokenTokenizer",
        "unk_token": "[UNK]",
    }
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")

    cases = []
    for text in CORPUS:
        text = text.replace("{first_reserved}", str(n + 5))
        ids = enc.encode(text, allowed_special="all")
        decoded = enc.decode(ids)
        assert decoded == text, (text, decoded)
        cases.append(
            {
                "text": text,
                "ids": ids,
                "decoded": decoded,
                "decoded_skip_special": enc.decode([i for i in ids if i not in special_ids]),
            }
        )
    expected = {
        "generator": "scripts/make_tiktoken_fixture.py",
        "tiktoken": tiktoken.__version__,
        "ranks": n,
        "vocab_size": n + NUM_RESERVED,
        "bos_token_id": specials["[BOS]"],
        "eos_token_id": specials["[EOS]"],
        "cases": cases,
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1, ensure_ascii=False) + "\n")
    print(f"{n} ranks, {len(cases)} cases, tiktoken.model {(OUT / 'tiktoken.model').stat().st_size} bytes")
    return cross_check_transformers(enc, specials, cases)


def cross_check_transformers(enc, specials, cases) -> int:
    try:
        from transformers.convert_slow_tokenizer import TikTokenConverter
    except ImportError:
        print("transformers not installed: no cross-check with TikTokenConverter")
        return 0
    ordered = [name for name, _ in sorted(specials.items(), key=lambda kv: kv[1])]
    hf = TikTokenConverter(
        vocab_file=str(OUT / "tiktoken.model"), pattern=KIMI_PATTERN, extra_special_tokens=ordered
    ).converted()
    bad = 0
    for case in cases:
        ids = hf.encode(case["text"], add_special_tokens=False).ids
        if ids != case["ids"]:
            bad += 1
            print(f"TikTokenConverter differs on {case['text']!r}:\n  tiktoken {case['ids']}\n  HF       {ids}")
    print(f"TikTokenConverter (Oniguruma) agrees with tiktoken on {len(cases) - bad} of {len(cases)} texts")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
