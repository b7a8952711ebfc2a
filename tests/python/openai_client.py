"""The official OpenAI Python client against a running ferroseek.

Usage: python openai_client.py BASE_URL API_KEY MODEL
Exits non-zero (with the failing check's traceback) if any check fails.
"""

import json
import sys
from typing import List, Literal

import jsonschema
import openai
from openai import OpenAI
from pydantic import BaseModel, ConfigDict, Field, conint

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=60)
messages = [{"role": "user", "content": "Hello, who are you?"}]

# The embedded model is random: only constrained output means anything, so
# every schema bounds its sizes to end well within `max_tokens`, and calls
# are one at a time (`parallel_tool_calls=False`) so the call section ends.
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME = {
    "type": "object",
    "properties": {"zone": {"enum": ["UTC", "CET"]}},
    "required": ["zone"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME}},
]
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 10},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3},
    },
    "required": ["name", "age", "pets"],
    "additionalProperties": False,
}


class Person(BaseModel):
    # `parse` sends a strict schema, which needs `additionalProperties: false`.
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=10)
    age: conint(ge=0, le=150)
    pets: List[Literal["cat", "dog"]] = Field(max_length=3)


# The helpers moved out of `beta` in newer clients; take whichever this one has.
completions = client.chat.completions
parse = getattr(completions, "parse", None) or client.beta.chat.completions.parse
stream_helper = getattr(completions, "stream", None) or client.beta.chat.completions.stream


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


def tool_kwargs(tool_choice, seed=5):
    return dict(
        model=model,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=TOOLS,
        tool_choice=tool_choice,
        parallel_tool_calls=False,
        max_tokens=200,
        seed=seed,
    )


def calls_of(tool_calls):
    return [(c.function.name, c.function.arguments) for c in tool_calls]


def check_calls(tool_calls, only=None):
    assert len(tool_calls) == 1, tool_calls
    for call in tool_calls:
        assert call.type == "function" and call.id.startswith("call_"), call
        if only:
            assert call.function.name == only, call
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def tools_required_and_named():
    for choice, only in [
        ("required", None),
        ({"type": "function", "function": {"name": "get_time"}}, "get_time"),
    ]:
        r = client.chat.completions.create(**tool_kwargs(choice))
        c = r.choices[0]
        assert c.finish_reason == "tool_calls", r
        assert c.message.content is None, r
        check_calls(c.message.tool_calls, only)


def tools_streamed_equal_whole():
    for choice in ["required", {"type": "function", "function": {"name": "get_weather"}}]:
        kw = tool_kwargs(choice, seed=7)
        whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
        check_calls(whole)
        # The client's stream helper reassembles the deltas itself.
        with stream_helper(**kw) as stream:
            final = stream.get_final_completion()
        c = final.choices[0]
        assert c.finish_reason == "tool_calls", final
        assert calls_of(c.message.tool_calls) == calls_of(whole), (c.message.tool_calls, whole)
        # And by hand, from the raw chunks, as the API reference describes.
        calls, content, finish = {}, "", None
        for chunk in client.chat.completions.create(**kw, stream=True):
            if not chunk.choices:
                continue
            ch = chunk.choices[0]
            content += ch.delta.content or ""
            for d in ch.delta.tool_calls or []:
                if d.index not in calls:
                    assert d.id and d.function.name, d
                    calls[d.index] = [d.id, d.function.name, ""]
                calls[d.index][2] += d.function.arguments or ""
            finish = ch.finish_reason or finish
        assert finish == "tool_calls" and content == "", (finish, content)
        assert sorted(calls) == list(range(len(calls)))
        assert [(n, a) for _, n, a in (calls[i] for i in sorted(calls))] == calls_of(whole)


def tools_multi_turn():
    kw = tool_kwargs("required")
    call = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    turn = kw["messages"] + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 degrees, sunny"},
    ]
    r = client.chat.completions.create(**{**kw, "messages": turn, "tool_choice": "auto"})
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls"), r
    # A tool answer to no call is refused, naming the message.
    stray = turn[:-1] + [{"role": "tool", "tool_call_id": "call_nobody", "content": "?"}]
    try:
        client.chat.completions.create(**{**kw, "messages": stray})
        raise AssertionError("a tool answer to no call accepted")
    except openai.BadRequestError as e:
        assert e.status_code == 400
        assert e.body["param"] == "messages[2].tool_call_id", e.body


def json_schema_parse_and_create():
    kw = dict(model=model, messages=[{"role": "user", "content": "Describe a person."}],
              max_tokens=300, seed=11)
    r = parse(**kw, response_format=Person)
    c = r.choices[0]
    assert c.finish_reason == "stop", r
    assert isinstance(c.message.parsed, Person), c.message
    assert c.message.parsed == Person.model_validate_json(c.message.content)
    fmt = {"type": "json_schema",
           "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    r = client.chat.completions.create(**kw, response_format=fmt)
    text = r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop", r
    jsonschema.validate(json.loads(text), PERSON)
    # The same seed streamed gives the same text.
    streamed = "".join(
        ch.choices[0].delta.content or ""
        for ch in client.chat.completions.create(**kw, response_format=fmt, stream=True)
        if ch.choices
    )
    assert streamed == text, (streamed, text)


def json_object():
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "JSON please."}],
        response_format={"type": "json_object"}, max_tokens=2000, seed=1,
    )
    # A random model may run out of tokens inside an open-ended object (seed
    # 1 closes its object in under 100 tokens on the embedded model).
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict), r
    else:
        assert r.choices[0].finish_reason == "length", r


def vllm_structured_outputs():
    kw = dict(model=model, messages=messages, max_tokens=20, seed=3)
    r = client.chat.completions.create(
        **kw, extra_body={"structured_outputs": {"choice": ["red", "green", "blue"]}})
    assert r.choices[0].message.content in ("red", "green", "blue"), r
    r = client.chat.completions.create(
        **kw, extra_body={"structured_outputs": {"regex": "[0-9]{3}-[a-z]{2}"}})
    text = r.choices[0].message.content
    assert len(text) == 6 and text[:3].isdigit() and text[3] == "-", text
    assert all("a" <= ch <= "z" for ch in text[4:]), text


def bad_constraints():
    try:
        client.chat.completions.create(
            **tool_kwargs({"type": "function", "function": {"name": "get_nothing"}}))
        raise AssertionError("an unknown function accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "tool_choice", e.body
    bad = {"type": "object", "properties": {"a": {"type": "strnig"}}}
    try:
        client.chat.completions.create(
            model=model, messages=messages, max_tokens=5,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
        raise AssertionError("an uncompilable schema accepted")
    except openai.BadRequestError as e:
        assert e.body["param"] == "response_format.json_schema.schema", e.body


def prefix_completion():
    r = client.chat.completions.create(
        model=model, max_tokens=8, temperature=0,
        messages=[{"role": "user", "content": "Count."},
                  {"role": "assistant", "content": "One, two,", "prefix": True}])
    assert isinstance(r.choices[0].message.content, str), r
    extra = r.usage.model_extra
    hit, miss = extra["prompt_cache_hit_tokens"], extra["prompt_cache_miss_tokens"]
    assert hit + miss == r.usage.prompt_tokens, r.usage


for name, fn in [
    ("chat", chat_plain),
    ("chat stream with include_usage", chat_stream_with_usage),
    ("chat n>1", chat_n),
    ("chat logprobs + top_logprobs", chat_logprobs),
    ("seed reproducibility", seed_reproducible),
    ("completions token ids + echo + logprobs", completions_token_ids_echo_logprobs),
    ("models list", models_list),
    ("errors", errors),
    ("tools: required and named tool_choice", tools_required_and_named),
    ("tools: streamed (helper and by hand) equal whole", tools_streamed_equal_whole),
    ("tools: multi-turn and a stray tool_call_id", tools_multi_turn),
    ("json_schema: parse into Pydantic, create, stream", json_schema_parse_and_create),
    ("json_object", json_object),
    ("structured_outputs choice and regex", vllm_structured_outputs),
    ("bad tool_choice and schema", bad_constraints),
    ("DeepSeek prefix completion and cache usage", prefix_completion),
]:
    check(name, fn)
print("all python client checks passed")
