"""Vocab-only GGUF files for the pre-tokenizers `deepseek-llm`, `deepseek-coder`, `glm4`
and `kimi-k2`, with the ids a reference tokenizer gives for a varied corpus.

For each pre-tokenizer the script trains a small byte-level BPE with Hugging Face
`tokenizers` on an embedded text, split by that pre-tokenizer's regexes as llama.cpp
defines them (`src/llama-vocab.cpp`, llama.cpp commit 0c1e570), adds special tokens, an
unused padding token and two normal tokens that no merge reaches (so that glm4's
`ignore_merges` shows), and writes `crates/engine/tests/fixtures/gguf_pretok/PRE.gguf`
with llama.cpp's gguf-py. The reference is a `tokenizers` tokenizer built from the same
vocabulary, merges and regexes with llama.cpp's per-pre flags (glm4: `ignore_merges`);
its encodings go to `expected.json`. `unknown-pre.gguf` carries a pre-tokenizer name
llama.cpp does not know.

    PYTHONPATH=/path/to/llama.cpp/gguf-py python scripts/make_gguf_pretok_fixtures.py
"""

import json
import re
from pathlib import Path

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "crates/engine/tests/fixtures/gguf_pretok"
VOCAB_SIZE = 600

# Kimi-K2's full pattern (llama.cpp's hand-written K2 splitter implements it), read from the
# one copy the Rust code uses: KIMI_PATTERN in crates/engine/src/tokenizer/tiktoken.rs.
_tiktoken_rs = (ROOT / "crates/engine/src/tokenizer/tiktoken.rs").read_text(encoding="utf-8")
_kimi = re.search(r"KIMI_PATTERN: &str = concat!\((.*?)\);", _tiktoken_rs, re.S)
KIMI_PATTERN = "".join(re.findall(r'r"(.*?)",', _kimi.group(1)))

CJK_KOREAN = "[\u4e00-\u9fa5\u0800-\u4e00\uac00-\ud7ff]+"
# llama.cpp's letter class of deepseek-llm, as escapes: it holds compatibility code points
# (U+1F7D, U+1FBE, U+2126, U+212A) that editors may normalize.
DEEPSEEK_LLM_LETTERS = (
    "\\s?[A-Za-z\u00b5\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u01ba\u01bc-\u01bf\u01c4-\u0293"
    "\u0295-\u02af\u0370-\u0373\u0376\u0377\u037b-\u037d\u037f\u0386\u0388-\u038a\u038c"
    "\u038e-\u03a1\u03a3-\u03f5\u03f7-\u0481\u048a-\u052f\u0531-\u0556\u10a0-\u10c5"
    "\u13a0-\u13f5\u13f8-\u13fd\u1c90-\u1cba\u1cbd-\u1cbf\u1d00-\u1d2b\u1d6b-\u1d77"
    "\u1d79-\u1d9a\u1e00-\u1f15\u1f18-\u1f1d\u1f20-\u1f45\u1f48-\u1f4d\u1f50-\u1f57\u1f59"
    "\u1f5b\u1f5d\u1f5f-\u1f7d\u1f80-\u1fb4\u1fb6-\u1fbc\u1fbe\u1fc2-\u1fc4\u1fc6-\u1fcc"
    "\u1fd0-\u1fd3\u1fd6-\u1fdb\u1fe0-\u1fec\u1ff2-\u1ff4\u1ff6-\u1ffc\u2102\u2107"
    "\u210a-\u2113\u2115\u2119-\u211d\u2124\u2126\u2128\u212a-\u212d\u212f-\u2134\u2139"
    "\u213c-\u213f\u2145-\u2149\u214e\u2183\u2184\u2c00-\u2c7b\u2c7e-\u2ce4\u2ceb-\u2cee"
    "\u2cf2\u2cf3\ua640-\ua66d\ua680-\ua69b\ua722-\ua76f\ua771-\ua787\ua78b-\ua78e"
    "\uab70-\uabbf\ufb00-\ufb06\ufb13-\ufb17\uff21-\uff3a\uff41-\uff5a"
    "\U00010400-\U0001044f\U000104b0-\U000104d3\U000104d8-\U000104fb\U00010c80-\U00010cb2"
    "\U00010cc0-\U00010cf2\U000118a0-\U000118df\U0001e900-\U0001e943]+"
)

# name → (regexes applied in turn, ignore_merges, special tokens, add_bos_token)
PRES = {
    "deepseek-llm": (
        [
            "[\r\n]",
            DEEPSEEK_LLM_LETTERS,
            "\\s?[!-/:-~\uff01-\uff0f\uff1a-\uff5e\u2018-\u201f\u3000-\u3002]+",
            "\\s+$",
            CJK_KOREAN,
            "\\p{N}+",
        ],
        False,
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
        True,
    ),
    "deepseek-coder": (
        ["[\r\n]", "\\s?\\p{L}+", "\\s?\\p{P}+", CJK_KOREAN, "\\p{N}"],
        False,
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>", "<｜fim▁begin｜>"],
        True,
    ),
    "glm4": (
        [
            "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+"
            "|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"
        ],
        True,
        ["[gMASK]", "<|endoftext|>", "<|user|>", "<|assistant|>"],
        False,
    ),
    "kimi-k2": (
        [KIMI_PATTERN],
        False,
        ["[BOS]", "[EOS]", "<|im_user|>", "<|im_end|>"],
        False,
    ),
}

TRAINING = """\
The quick brown fox jumps over the lazy dog. I'll say it again: the dog isn't quick, and
the fox doesn't care. We've seen THE FOX, they'd said; you're right, she's gone.
def tokenize(text: str) -> list[int]:
    return [ord(c) for c in text if not c.isspace()]
fn main() { let v: Vec<u64> = (0..100).map(|i| i * i).collect(); println!("{v:?}"); }
for (int i = 0; i < n; ++i) { total += values[i] * 2.5; }
人工智能的研究正在改变世界。我们今天学习中文和编程。北京是中国的首都。
日本語のテキストとカタカナ、ひらがなを混ぜた文章です。
안녕하세요 세계! 서울은 한국의 수도입니다. 한국어 문장을 배웁니다.
Prices: 12, 345, 6789, 1234567890, 3.14159, 2024-01-31, 100%, $99.99, ４５６.
Привет мир, это тест. Ελληνικά γράμματα. Ångström naïve café résumé.
"""

CORPUS = [
    "Hello, world! This is a test.",
    "",
    "   \n\t ",
    "I'll go; you'd stay. We've seen it, they're sure, she's 'quoted' and I'M LOUD, DON'T.",
    'fn main() {\n    let x: Vec<u32> = (0..10).map(|i| i * 2).collect();\n    println!("{x:?}");\n}\n',
    "def f(a, b=2):\n\tif a  >  b:\n\t\treturn a**b  # power\n\treturn None\n",
    "我爱北京天安门，天安门上太阳升。人工智能的研究",
    "中文English混合 CamelCase iPhone15Pro价格是8999元",
    "日本語のテキストとカタカナ、ひらがな。東京タワー",
    "안녕하세요 세계! 서울은 한국의 수도입니다.",
    "Привет мир مرحبا שלום Ελληνικά Ωmega K Kelvin ᾽ι",
    "1 12 123 1234 12345 123456789012345 3.14159 1,000,000 ２０２４年 ①②③ ٣٤٥",
    "👍🏽 👨‍👩‍👧‍👦 🇯🇵🇫🇷 ❤️ 😀😂🚀",
    "a  b   c\t\td\n\n\n  e \r\n f   \n",
    "trailing spaces   ",
    "e\u0301 cafe\u0301 café naïve Ångström ǅungla",
    "\u3000全角スペース\u3000と full-width ＡＢＣ ｄｅｆ！",
    "x" * 40 + " " + "-" * 30 + "\n" + "=" * 17,
    "https://example.com/path?q=1&r=2#frag user@example.org",
    "the ferroseek server; ferroseek's tokens",
]


def special_corpus(specials: list[str]) -> list[str]:
    a, b, c, d = specials
    return [
        f"{a}Once upon a time{b}",
        f"{c}Hi there{d}{c} again{b}",
        f"near misses: {a[:-1]} {b[1:]} {c}{c}",
    ]


def splitter(regexes: list[str]) -> pre_tokenizers.PreTokenizer:
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in regexes]
    return pre_tokenizers.Sequence(splits + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train(regexes: list[str]) -> tuple[dict[str, int], list[str]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = splitter(regexes)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([TRAINING] * 4, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return model["vocab"], merges


def byte_level(text: str) -> str:
    table = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in table.pre_tokenize_str(text))


def build(pre: str) -> dict:
    regexes, ignore_merges, specials, add_bos = PRES[pre]
    vocab, merges = train(regexes)
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    types = [gguf.TokenType.NORMAL] * len(tokens)
    # Whole words no merge reaches: only `ignore_merges` emits them as one token.
    for word in [" ferroseek", "ferroseek"]:
        assert byte_level(word) not in vocab
        tokens.append(byte_level(word))
        types.append(gguf.TokenType.NORMAL)
    first_special = len(tokens)
    tokens += specials + ["<think>", "[PAD0]"]
    types += [gguf.TokenType.CONTROL] * len(specials) + [gguf.TokenType.USER_DEFINED, gguf.TokenType.UNUSED]
    bos, eos = first_special, first_special + 1

    path = OUT / f"{pre}.gguf"
    writer = gguf.GGUFWriter(path, "deepseek2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(bos)
    writer.add_eos_token_id(eos)
    writer.add_add_bos_token(add_bos)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    normal = {t: i for i, t in enumerate(tokens) if types[i] == gguf.TokenType.NORMAL}
    ref = Tokenizer(models.BPE(vocab=normal, merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=ignore_merges))
    ref.pre_tokenizer = splitter(regexes)
    ref.decoder = decoders.ByteLevel()
    ref.add_tokens(
        [
            AddedToken(t, special=i in (bos, eos), normalized=False)
            for i, t in enumerate(tokens)
            if types[i] in (gguf.TokenType.CONTROL, gguf.TokenType.USER_DEFINED)
        ]
    )
    for i, t in enumerate(tokens):
        if types[i] != gguf.TokenType.UNUSED:
            assert ref.token_to_id(t) == i, (pre, t)
    cases = []
    for text in CORPUS + special_corpus(specials):
        ids = ref.encode(text, add_special_tokens=False).ids
        cases.append(
            {
                "text": text,
                "ids": ids,
                "ids_with_special_tokens": ([bos] if add_bos else []) + ids,
                "decoded": ref.decode(ids, skip_special_tokens=False),
            }
        )
    whole = [c for c in cases if tokens.index(byte_level(" ferroseek")) in c["ids"]]
    assert bool(whole) == ignore_merges, pre
    print(f"{pre}: {len(tokens)} tokens, {len(merges)} merges, {path.stat().st_size} bytes")
    return {"bos_token_id": bos, "eos_token_id": eos, "add_bos_token": add_bos, "cases": cases}


def write_unknown_pre() -> None:
    writer = gguf.GGUFWriter(OUT / "unknown-pre.gguf", "deepseek2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-4o")
    writer.add_token_list(["a", "b", "ab"])
    writer.add_token_merges(["a b"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    expected = {pre: build(pre) for pre in PRES}
    write_unknown_pre()
    # One case a line: diffs of a regenerated file stay readable.
    text = json.dumps(expected, ensure_ascii=False, indent=1)
    text = re.sub(r"\[[\d,\s]*\]", lambda m: re.sub(r"\s+", "", m.group(0)).replace(",", ", "), text)
    (OUT / "expected.json").write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
