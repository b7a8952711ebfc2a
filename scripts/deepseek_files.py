"""What the scripts that write DeepSeek-style model folders share: DeepSeek's special tokens,
the byte-level BPE pre-tokenisation, tokenizer_config.json entries and byte-stable safetensors."""

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# DeepSeek marks these special=false, so they survive skip_special_tokens.
CHAT_TOKENS = [
    "<｜User｜>",
    "<｜Assistant｜>",
    "<think>",
    "</think>",
    "<｜tool▁calls▁begin｜>",
    "<｜tool▁calls▁end｜>",
    "<｜tool▁call▁begin｜>",
    "<｜tool▁call▁end｜>",
    "<｜tool▁outputs▁begin｜>",
    "<｜tool▁outputs▁end｜>",
    "<｜tool▁output▁begin｜>",
    "<｜tool▁output▁end｜>",
    "<｜tool▁sep｜>",
]

# DeepSeek's word/punctuation/space split.
WORD_SPLIT = Regex(
    r"[!\"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"
    r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+"
    r"| ?[\p{P}\p{S}]+[\r\n]*"
    r"|\s*[\r\n]+"
    r"|\s+(?!\S)"
    r"|\s+"
)


def train_bpe(splits, corpus, size):
    """A byte-level BPE of `size` ids trained on `corpus`: the pre-tokenizer runs `splits`
    (isolating Splits), then the word split, then the byte-level mapping; BOS/EOS/PAD are ids
    0..2, CHAT_TOKENS the last ids, and the post-processor prepends BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(r, behavior="isolated") for r in splits]
        + [
            pre_tokenizers.Split(WORD_SPLIT, behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in (BOS, EOS, PAD)]
    trainer = trainers.BpeTrainer(
        vocab_size=size - len(CHAT_TOKENS),
        min_frequency=2,
        show_progress=False,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in CHAT_TOKENS])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 0)]
    )
    assert tok.token_to_id(BOS) == 0 and tok.token_to_id(EOS) == 1 and tok.token_to_id(PAD) == 2
    assert tok.get_vocab_size() == size, tok.get_vocab_size()
    return tok


def added_token_entry(content):
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def tokenizer_config(chat_template, model_max_length):
    """DeepSeek-V3's layout: AddedToken dicts, LlamaTokenizerFast, pad = eos."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": added_token_entry(BOS),
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "eos_token": added_token_entry(EOS),
        "legacy": True,
        "model_max_length": model_max_length,
        "pad_token": added_token_entry(EOS),
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
        "unk_token": None,
        "use_default_system_prompt": False,
    }


def canonicalize_safetensors(path):
    """Rewrite the header with sorted keys: the library writes metadata in hash order, which
    would make every regeneration a spurious diff. Tensor bytes are left untouched."""
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + blob[8 + n:])
