"""LangChain's `ChatOpenAI` against a running ferroseek: tool binding and
structured output, the two features an agent framework leans on.

Usage: python langchain_client.py BASE_URL API_KEY MODEL
Exits non-zero (with the failing check's traceback) if any check fails.

The embedded model is random: only constrained output means anything, so
every schema bounds its sizes, calls are one at a time and each request is
seeded. Nothing here counts tokens: that would make tiktoken download its
encodings, and the tests run without a network.
"""

import sys
from typing import List, Literal

import jsonschema
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, ConfigDict, Field, conint

base_url, api_key, model = sys.argv[1], sys.argv[2], sys.argv[3]


def llm(seed):
    return ChatOpenAI(
        base_url=base_url,
        api_key=api_key,
        model=model,
        max_retries=0,
        timeout=60,
        temperature=1.0,
        seed=seed,
        max_tokens=300,
    )


class GetWeather(BaseModel):
    """The weather in a city."""

    model_config = ConfigDict(extra="forbid")
    city: str = Field(max_length=12)
    unit: Literal["celsius", "fahrenheit"]


WEATHER = GetWeather.model_json_schema()


def get_time(zone: Literal["UTC", "CET"]) -> str:
    """The time now in a zone.

    Args:
        zone: the time zone.
    """
    return "12:00"


class Person(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=10)
    age: conint(ge=0, le=150)
    pets: List[Literal["cat", "dog"]] = Field(max_length=3)


def check(name, fn):
    fn()
    print(f"ok: {name}", flush=True)


def bind_tools():
    tools = [GetWeather, get_time]
    # `strict` closes the schemas (`additionalProperties: false`), so a
    # random model cannot add keys until `max_tokens`.
    for choice, only in [("GetWeather", "GetWeather"), ("get_time", "get_time"), ("required", None)]:
        bound = llm(5).bind_tools(tools, tool_choice=choice, parallel_tool_calls=False, strict=True)
        msg = bound.invoke("Weather in Paris?")
        assert isinstance(msg, AIMessage), msg
        assert msg.response_metadata["finish_reason"] == "tool_calls", msg
        assert not msg.invalid_tool_calls, msg.invalid_tool_calls
        assert len(msg.tool_calls) == 1, msg.tool_calls
        call = msg.tool_calls[0]
        if only:
            assert call["name"] == only, call
        assert isinstance(call["args"], dict), call
        if call["name"] == "GetWeather":
            jsonschema.validate(call["args"], WEATHER)
            GetWeather.model_validate(call["args"])
        else:
            assert call["name"] == "get_time" and call["args"]["zone"] in ("UTC", "CET"), call


def structured_json_schema():
    out = llm(11).with_structured_output(Person, method="json_schema").invoke("Describe a person.")
    assert isinstance(out, Person), out
    # `include_raw` shows it came back as content under `response_format`.
    raw = llm(11).with_structured_output(Person, method="json_schema", include_raw=True)
    got = raw.invoke("Describe a person.")
    assert got["parsing_error"] is None, got
    assert got["parsed"] == out, got
    assert got["raw"].response_metadata["finish_reason"] == "stop", got["raw"]


def structured_function_calling():
    s = llm(11).with_structured_output(Person, method="function_calling", strict=True)
    out = s.invoke("Describe a person.")
    assert isinstance(out, Person), out


for name, fn in [
    ("bind_tools with a named and a required tool_choice", bind_tools),
    ("with_structured_output json_schema", structured_json_schema),
    ("with_structured_output function_calling", structured_function_calling),
]:
    check(name, fn)
print("all langchain client checks passed")
