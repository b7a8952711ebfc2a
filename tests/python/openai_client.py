"""The official OpenAI Python client against a running ferroseek.

Usage: python openai_client.py BASE_URL API_KEY MODEL
Exits non-zero (with the failing check's traceback) if any check fails.
"""

import sys

import openai
from openai import OpenAI

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
messages = [{"role": "user", "content": "Hello, who are you?"}]


def check(name, fn):
    fn()
    print(f"ok: {name}", flush=True)


def chat_plain():
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=8)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert isinstance(r.choices[0].message.content, str)
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 8
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.usage.prompt_tokens_details.cached_tokens >= 0


def chat_stream_with_usage():
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=6,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishes) == 1, finishes
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text, "the stream carried content"
    assert all(c.usage is None for c in chunks[:-1])


def chat_n():
    r = client.chat.completions.create(model=model, messages=messages, max_tokens=4, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]


def chat_logprobs():
    r = client.chat.completions.create(
        model=model, messages=messages, max_tokens=5, logprobs=True, top_logprobs=3, temperature=0
    )
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        assert bytes(entry.bytes).decode("utf-8", "replace") is not None


def seed_reproducible():
    kw = dict(model=model, messages=messages, max_tokens=10, temperature=1.0, seed=1234)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b, (a, b)


def completions_token_ids_echo_logprobs():
    r = client.completions.create(
        model=model, prompt=[[1, 2, 3], [4, 5]], max_tokens=3, echo=True, logprobs=2
    )
    assert len(r.choices) == 2
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 3 + 3 and lp.token_logprobs[0] is None
    assert len(lp.text_offset) == len(lp.tokens)
    r = client.completions.create(model=model, prompt="Once", max_tokens=0, echo=True, logprobs=1)
    assert r.choices[0].text == "Once" and r.usage.completion_tokens == 0


def models_list():
    ids = [m.id for m in client.models.list()]
    assert model in ids
    # Every served name, one that starts with `/` (a model given by its
    # absolute path) included: older clients send `/v1/models//srv/...`,
    # newer ones `/v1/models/%2Fsrv%2F...`.
    for name in ids:
        assert client.models.retrieve(name).id == name, name


def errors():
    try:
        client.chat.completions.create(model=model, messages=[], max_tokens=2)
        raise AssertionError("empty messages accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400 and "messages" in str(e)
    try:
        client.chat.completions.create(model="nope", messages=messages, max_tokens=2)
        raise AssertionError("unknown model accepted")
    except openai.NotFoundError as e:
        assert e.status_code == 404
    bad_key = OpenAI(base_url=base_url, api_key="wrong", max_retries=0)
    try:
        bad_key.models.list()
        raise AssertionError("wrong key accepted")
    except openai.AuthenticationError as e:
        assert e.status_code == 401


for name, fn in [
    ("chat", chat_plain),
    ("chat stream with include_usage", chat_stream_with_usage),
    ("chat n>1", chat_n),
    ("chat logprobs + top_logprobs", chat_logprobs),
    ("seed reproducibility", seed_reproducible),
    ("completions token ids + echo + logprobs", completions_token_ids_echo_logprobs),
    ("models list", models_list),
    ("errors", errors),
]:
    check(name, fn)
print("all python client checks passed")
