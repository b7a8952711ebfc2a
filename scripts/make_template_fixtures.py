#!/usr/bin/env python3
"""Render chat templates with Hugging Face transformers to make ferroseek-engine's fixtures.

Writes crates/engine/tests/fixtures/chat_templates.json: for every template,
conversation, set of extra template variables (the `chat_template_kwargs` of
an OpenAI-style request) and `add_generation_prompt`, the exact text that
`tokenizer.apply_chat_template(..., tokenize=False)` renders, or the
exception it raises. crates/engine/tests/chat_templates.rs renders the same
cases with ferroseek's minijinja environment and requires byte equality.

Two kinds of template:

* the real templates of the DeepSeek family, read from
  ../shared/chat_templates/ (outside the repository, see its README); the
  fixture stores their file names, and the Rust test reads them from the same
  place;
* small templates written here that exercise the Python behaviour templates
  lean on (`tojson` options, printing of True/None/lists, str methods, loop
  controls); these are stored in the fixture itself.

Where HF fails only because a template calls the `from_json` filter, which
HF's environment lacks but ferroseek provides (DeepSeek-V3.2/V4 parse string
tool-call arguments with it), the case is rendered a second time with
`from_json = json.loads` added to HF's environment; the fixture keeps HF's
error under `hf_error` and the extended render under `expected`.

It also writes crates/engine/tests/fixtures/tiny_tokenizer.json: what HF's
AutoTokenizer does with the embedded default model's tokenizer
(models/tiny-deepseek-v3): ids of a few texts with and without special
tokens, their decoding, and its own chat template rendered and encoded.
Rerun this script when that tokenizer changes.

Deterministic: no clock, no randomness, no network. Usage (from the repo root):

    /work/pyenv/bin/python scripts/make_template_fixtures.py
"""

import json
import sys
from pathlib import Path

import jinja2
import transformers
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

REPO = Path(__file__).resolve().parent.parent
TEMPLATE_DIR = REPO.parent / "shared" / "chat_templates"
OUT = REPO / "crates" / "engine" / "tests" / "fixtures" / "chat_templates.json"
TINY_MODEL = REPO / "models" / "tiny-deepseek-v3"
TINY_OUT = REPO / "crates" / "engine" / "tests" / "fixtures" / "tiny_tokenizer.json"

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"

# Which extra variables each template reads (grep for `thinking`,
# `enable_thinking`, `reasoning_effort`, `drop_thinking`, `response_format`).
TEMPLATES = {
    "deepseek-ai-DeepSeek-V3.1.jinja": [{}, {"thinking": True}, {"enable_thinking": True}],
    "deepseek-ai-DeepSeek-V3.2.jinja": [{}, {"thinking": True}],
    "deepseek-ai-DeepSeek-V4.jinja": [
        {},
        {"thinking": True},
        {"thinking": True, "reasoning_effort": "max"},
        {"thinking": True, "drop_thinking": False},
    ],
    "deepseek-ai-DeepSeek-V4-Flash-0731.jinja": [
        {},
        {"thinking": True, "reasoning_effort": "high"},
        {"thinking": True, "reasoning_effort": "max"},
        {"thinking": True, "drop_thinking": False},
    ],
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja": [{}, {"enable_thinking": True}],
    "moonshotai-Kimi-K2.jinja": [{}],
    "Kimi-K2-Thinking.jinja": [{}],
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": 'Get the current weather in a city — say "where" & «when».',
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. 北京 or Zürich"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.\nReturns a list of results.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string"},
                "limit": {"type": "integer", "minimum": 1, "default": 5},
                "threshold": {"type": "number", "default": 0.5},
                "safe": {"type": "boolean", "default": True},
                "site": {"type": ["string", "null"], "default": None},
            },
            "required": ["query"],
        },
    },
}


def user(content):
    return {"role": "user", "content": content}


def system(content):
    return {"role": "system", "content": content}


def assistant(content, reasoning=None, tool_calls=None):
    # OpenAI clients send `content: null` next to tool calls; HF drops None keys.
    msg = {"role": "assistant", "content": content}
    if tool_calls is not None:
        msg["tool_calls"] = tool_calls
    if reasoning is not None:
        msg["reasoning_content"] = reasoning
    return msg


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool(call_id, content, name=None):
    msg = {"role": "tool", "content": content}
    if name is not None:
        msg["name"] = name
    msg["tool_call_id"] = call_id
    return msg


def text_parts(*texts):
    return [{"type": "text", "text": t} for t in texts]


WEATHER_CALLS = [
    call("call_1", "get_weather", '{"city": "Paris"}'),
    call("call_2", "get_weather", '{"city": "Berlin", "unit": "celsius"}'),
]
WEATHER_RESULTS = [
    tool("call_1", "18°C, sunny", name="get_weather"),
    tool("call_2", "12°C, rain", name="get_weather"),
]
RICH_ARGS = json.dumps(
    {
        "query": 'rust "minijinja" \\ 文档 😀',
        "limit": 3,
        "threshold": 0.25,
        "safe": False,
        "site": None,
        "filters": {"lang": ["en", "zh"], "year": 2024},
    },
    ensure_ascii=False,
)

CONVERSATIONS = {
    "user_only": {"messages": [user("Hello!")]},
    "system_user": {"messages": [system("You are a helpful assistant."), user("What is 2+2?")]},
    "multi_turn": {
        "messages": [
            system("You are a helpful assistant."),
            user("What is 2+2?"),
            assistant("2+2 is 4."),
            user("And 3+3?"),
        ]
    },
    "ends_with_assistant": {"messages": [user("Say hi."), assistant("Hi there!")]},
    "two_system_prompts": {"messages": [system("First rule."), system("Second rule."), user("Go.")]},
    "reasoning_in_history": {
        "messages": [
            user("What is 2+2?"),
            assistant("It is 4.", reasoning="Two plus two makes four."),
            user("And 3+3?"),
        ]
    },
    "reasoning_last": {
        "messages": [user("What is 2+2?"), assistant("It is 4.", reasoning="Two plus two makes four.")]
    },
    "think_tags_in_content": {
        "messages": [
            user("What is 2+2?"),
            assistant("<think>Two plus two.</think>\n\nIt is 4."),
            user("Thanks."),
        ]
    },
    "tool_declarations_only": {"tools": [WEATHER_TOOL, SEARCH_TOOL], "messages": [user("Hi, who are you?")]},
    "tool_calls_pending_results": {
        "tools": [WEATHER_TOOL],
        "messages": [
            system("You are a weather bot."),
            user("Weather in Paris and Berlin?"),
            assistant(None, tool_calls=WEATHER_CALLS),
            *WEATHER_RESULTS,
        ],
    },
    "tool_calls_answered": {
        "tools": [WEATHER_TOOL],
        "messages": [
            user("Weather in Paris and Berlin?"),
            assistant(None, tool_calls=WEATHER_CALLS),
            *WEATHER_RESULTS,
            assistant("Paris: 18°C and sunny. Berlin: 12°C with rain."),
            user("Thanks!"),
        ],
    },
    "tool_call_with_content_and_reasoning": {
        "tools": [SEARCH_TOOL],
        "messages": [
            user("Find the minijinja docs."),
            assistant(
                "Let me search.",
                reasoning="I should use the search tool.",
                tool_calls=[call("call_9", "search", RICH_ARGS)],
            ),
            tool("call_9", '[{"title": "minijinja", "url": "https://docs.rs/minijinja"}]'),
        ],
    },
    "tool_call_empty_arguments": {
        "tools": [SEARCH_TOOL],
        "messages": [
            user("Run it."),
            assistant("", tool_calls=[call("call_0", "search", "{}")]),
            tool("call_0", "no results"),
        ],
    },
    "content_parts": {
        "messages": [
            {"role": "system", "content": text_parts("You are terse.")},
            {"role": "user", "content": text_parts("Describe ", "this.")},
        ]
    },
    "unicode_and_escapes": {
        "messages": [
            user('Emoji 😀, CJK 你好, quotes "\'\\ and\nnew line\ttab'),
            assistant("Noted: 😀 你好 \\n"),
            user("  padded  "),
        ]
    },
    "response_format": {
        "messages": [user("Give me JSON.")],
        "kwargs": {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "integer"}}}},
            }
        },
    },
}

# Small templates that pin down the Python behaviour chat templates rely on.
SYNTHETIC_TEMPLATES = {
    "py_printing": (
        "{{ true }}|{{ false }}|{{ none }}|{{ 7 }}|{{ 1.0 }}|{{ 2.5e-7 }}|{{ 1e22 }}|{{ -0.0 }}"
        "|{{ [1, 'a', none, true, 1.5] }}|{{ {'k': 'v', 'n': [1, 2]} }}|{{ \"it's\" }}|{{ ['it\\'s'] }}"
        "|{{ true | string }}|{{ none | string }}|{{ undefined_name }}|"
    ),
    "py_tojson": (
        "{{ messages | tojson }}\n{{ messages | tojson(indent=2) }}\n"
        "{{ {'b': 1, 'a': [1.5, none, true, 'é\\u2028\\x01\"\\\\/']} | tojson(separators=(',', ':')) }}\n"
        "{{ {'b': 1, 'a': 2} | tojson(sort_keys=true) }}\n{{ 'é😀' | tojson(ensure_ascii=true) }}\n"
        "{{ [] | tojson(indent=2) }}{{ {} | tojson(indent=2) }}{{ [[]] | tojson(indent='\\t') }}\n"
        "{{ 12345678901234567890 | tojson }} {{ 0.1 | tojson }} {{ 100.0 | tojson }} {{ 1e16 | tojson }} {{ 3e-5 | tojson }}"
    ),
    "py_str_methods": (
        "{% set s = '  Hello, World  ' %}[{{ s.strip() }}][{{ s.lstrip() }}][{{ s.rstrip() }}]"
        "[{{ s.strip().split(', ') }}][{{ 'a b  c'.split() }}][{{ 'a,b,c'.split(',', 1) }}]"
        "[{{ 'abc'.startswith('ab') }}][{{ 'abc'.endswith(('x', 'c')) }}][{{ 'ab'.upper() }}{{ 'AB'.lower() }}]"
        "[{{ 'x-y'.replace('-', '+') }}][{{ 'abc'[1:] }}][{{ 'abc'[-1] }}][{{ 'a</think>b</think>c'.split('</think>')[-1] }}]"
        "[{{ 'xxhixx'.strip('x') }}][{{ 'Title me'.title() }}][{{ '{} and {}'.format(1, 'b') }}]"
    ),
    "py_dict_methods": (
        "{% for m in messages %}{% for k, v in m.items() %}{{ k }}={{ v }};{% endfor %}"
        "{{ m.get('name', 'anon') }}|{{ m.get('missing') }}|{{ m.keys() | list }}|"
        "{{ 'role' in m }}{{ 'nope' in m }}\n{% endfor %}"
    ),
    "loop_controls_and_namespace": (
        "{% set ns = namespace(n=0, seen=[]) %}{% for i in range(10) %}{% if i is even %}{% continue %}{% endif %}"
        "{% if i > 7 %}{% break %}{% endif %}{% set ns.n = ns.n + i %}{{ loop.index }}:{{ i }} {% endfor %}"
        "sum={{ ns.n }} {% for i in range(5, 0, -2) %}{{ i }}{% if not loop.last %},{% endif %}{% endfor %}"
        " {{ messages | length }} {{ messages[-1]['role'] }} {{ (messages | map(attribute='role') | list) }}"
    ),
    "whitespace_control": (
        "{% for message in messages %}\n"
        "    {% if message['role'] == 'user' %}\n"
        "        <user>{{ message['content'] }}</user>\n"
        "    {% else %}\n"
        "        <other>{{ message['content'] }}</other>\n"
        "    {%- endif %}\n"
        "{% endfor %}\n"
        "{%- if add_generation_prompt %}\n"
        "<gen>\n"
        "{% endif %}\n"
    ),
    "special_tokens_and_kwargs": (
        "{{ bos_token }}[{{ eos_token }}][{{ add_generation_prompt }}][{{ tools }}][{{ tools is none }}]"
        "[{{ custom_flag is defined }}][{{ custom_flag }}][{{ nested.list[1] if nested is defined else 'no' }}]"
    ),
    "raise_exception": (
        "{% for m in messages %}{% if m['role'] == 'system' %}"
        "{{ raise_exception('System role not supported, got: ' + m['content']) }}{% endif %}"
        "{{ m['content'] }}{% endfor %}"
    ),
    "python_type_error": "{{ 'count: ' + messages | length }}",
    "undefined_attribute_error": "{{ messages[0].nothing.deeper }}",
    "content_parts_passthrough": (
        "{% for m in messages %}{% if m['content'] is string %}S:{{ m['content'] }}"
        "{% else %}L:{{ m['content'] }}|{% for p in m['content'] %}{{ p['type'] }}={{ p['text'] }};{% endfor %}"
        "{% endif %}\n{% endfor %}"
    ),
    "message_fields": (
        "{% for m in messages %}{{ m | tojson }}\n"
        "{% if m.tool_calls %}{% for tc in m.tool_calls %}"
        "{{ tc.function.arguments }} {{ tc.function.arguments is string }} {{ tc['id'] }}\n{% endfor %}{% endif %}"
        "{% endfor %}"
    ),
}

SYNTHETIC_CASES = [
    ("py_printing", "user_only", {}),
    ("py_tojson", "tool_call_with_content_and_reasoning", {}),
    ("py_tojson", "content_parts", {}),
    ("py_str_methods", "user_only", {}),
    ("py_dict_methods", "tool_calls_pending_results", {}),
    ("loop_controls_and_namespace", "multi_turn", {}),
    ("whitespace_control", "multi_turn", {}),
    ("special_tokens_and_kwargs", "user_only", {}),
    ("special_tokens_and_kwargs", "tool_declarations_only", {"custom_flag": True, "nested": {"list": [1, "two"]}}),
    ("raise_exception", "system_user", {}),
    ("raise_exception", "user_only", {}),
    ("python_type_error", "user_only", {}),
    ("undefined_attribute_error", "user_only", {}),
    ("content_parts_passthrough", "content_parts", {}),
    ("message_fields", "tool_calls_answered", {}),
    ("message_fields", "tool_call_with_content_and_reasoning", {}),
]


def make_tokenizer():
    # The template only sees the special tokens' strings; a two-word vocabulary is enough.
    backend = Tokenizer(models.WordLevel({BOS: 0, EOS: 1}, unk_token=EOS))
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=BOS, eos_token=EOS)


def render(tok, template, conv, kwargs, add_generation_prompt):
    messages = json.loads(json.dumps(conv["messages"]))  # HF must not see shared objects
    tools = conv.get("tools")
    all_kwargs = {**conv.get("kwargs", {}), **kwargs}
    try:
        text = tok.apply_chat_template(
            messages,
            tools=json.loads(json.dumps(tools)) if tools is not None else None,
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **all_kwargs,
        )
        return {"expected": text}
    except Exception as e:  # the fixture records what HF raises
        return {"error": f"{type(e).__name__}: {e}"}


def add_from_json(template):
    _compile_jinja_template(template).environment.filters["from_json"] = json.loads


def main():
    if not TEMPLATE_DIR.is_dir():
        sys.exit(f"chat templates not found at {TEMPLATE_DIR}")
    tok = make_tokenizer()
    jobs = []  # (case head, template source, conversation, kwargs, add_generation_prompt)
    for file_name, kwarg_sets in TEMPLATES.items():
        template = (TEMPLATE_DIR / file_name).read_text(encoding="utf-8")
        for conv_name in CONVERSATIONS:
            for kwargs in kwarg_sets:
                for gen in (False, True):
                    jobs.append(({"template_file": file_name}, template, conv_name, kwargs, gen))
    for tpl_name, conv_name, kwargs in SYNTHETIC_CASES:
        for gen in (False, True):
            jobs.append(({"template": tpl_name}, SYNTHETIC_TEMPLATES[tpl_name], conv_name, kwargs, gen))

    # Every case with HF as shipped first: HF caches compiled templates, so a
    # `from_json` added to one must not reach a case rendered after it.
    cases = []
    for head, template, conv_name, kwargs, gen in jobs:
        case = {**head, "conversation": conv_name, "kwargs": kwargs, "add_generation_prompt": gen}
        case.update(render(tok, template, CONVERSATIONS[conv_name], kwargs, gen))
        cases.append(case)
    for case, (_, template, conv_name, kwargs, gen) in zip(cases, jobs):
        if "No filter named 'from_json'" in case.get("error", ""):
            add_from_json(template)
            case["hf_error"] = case.pop("error")
            case["extension"] = "from_json"
            case.update(render(tok, template, CONVERSATIONS[conv_name], kwargs, gen))

    fixture = {
        "generator": "scripts/make_template_fixtures.py",
        "transformers_version": transformers.__version__,
        "jinja2_version": jinja2.__version__,
        "template_dir": "../shared/chat_templates",
        "special_tokens": {"bos_token": BOS, "eos_token": EOS},
        "conversations": CONVERSATIONS,
        "synthetic_templates": SYNTHETIC_TEMPLATES,
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_err = sum("error" in c for c in cases)
    n_ext = sum("extension" in c for c in cases)
    print(f"wrote {OUT.relative_to(REPO)}: {len(cases)} cases, {n_err} HF errors, {n_ext} rendered with from_json")

    if (TINY_MODEL / "tokenizer.json").is_file():
        tiny = tokenizer_fixture()
        TINY_OUT.write_text(json.dumps(tiny, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {TINY_OUT.relative_to(REPO)}: {len(tiny['encodings'])} texts, {len(tiny['chats'])} chats")
    else:
        print(f"skipped {TINY_OUT.relative_to(REPO)}: no tokenizer at {TINY_MODEL.relative_to(REPO)}")


TOKENIZER_TEXTS = [
    "hello world",
    "Hello, World! 123456 3.14159",
    "  leading and trailing spaces  ",
    "line one\nline two\r\n\ttabbed",
    "中文分词测试，日本語のテキスト、한국어",
    "emoji 😀👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "<｜begin▁of▁sentence｜>special tokens inside<｜end▁of▁sentence｜> text",
    "<｜User｜>hi<｜Assistant｜><think>\nreasoning\n</think>answer",
    "",
]

# The tiny model carries ferroseek's own template (scripts/default_chat_template.jinja): these
# cover its branches (system/developer, content parts, tools, reasoning left out of history).
TINY_CONVERSATIONS = {
    **{
        name: CONVERSATIONS[name]
        for name in [
            "system_user",
            "multi_turn",
            "tool_calls_answered",
            "reasoning_in_history",
            "think_tags_in_content",
            "tool_declarations_only",
            "tool_call_with_content_and_reasoning",
            "content_parts",
            "unicode_and_escapes",
        ]
    },
    "developer_and_system": {
        "messages": [system("First rule."), {"role": "developer", "content": "Second rule."}, user("Go.")]
    },
}
TINY_KWARGS = [{}, {"thinking": True}, {"enable_thinking": True, "reasoning_effort": "high"}]


def tokenizer_fixture():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(TINY_MODEL))
    encodings = []
    for text in TOKENIZER_TEXTS:
        with_special = tok(text)["input_ids"]
        plain = tok(text, add_special_tokens=False)["input_ids"]
        encodings.append(
            {
                "text": text,
                "ids_with_special_tokens": with_special,
                "ids": plain,
                "decoded": tok.decode(with_special),
                "decoded_skip_special": tok.decode(with_special, skip_special_tokens=True),
            }
        )
    chats = []
    for conv_name, conv in TINY_CONVERSATIONS.items():
        for gen in (False, True):
            for kwargs in TINY_KWARGS:
                messages = json.loads(json.dumps(conv["messages"]))
                tools = conv.get("tools")
                text = tok.apply_chat_template(
                    messages, tools=tools, add_generation_prompt=gen, tokenize=False, **kwargs
                )
                ids = tok.apply_chat_template(
                    messages, tools=tools, add_generation_prompt=gen, tokenize=True, return_dict=False, **kwargs
                )
                chats.append(
                    {"conversation": conv_name, "kwargs": kwargs, "add_generation_prompt": gen, "text": text, "ids": ids}
                )
    return {
        "generator": "scripts/make_template_fixtures.py",
        "transformers_version": transformers.__version__,
        "model_dir": "models/tiny-deepseek-v3",
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "encodings": encodings,
        "conversations": TINY_CONVERSATIONS,
        "chats": chats,
    }


if __name__ == "__main__":
    main()
