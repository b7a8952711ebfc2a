"""The official OpenAI Python client as part of the soak (tests/soak.rs).

Usage: python soak_client.py BASE_URL REQUESTS
Sends REQUESTS mixed requests from 8 threads: chat and completions, streamed
and not, a third of the streams closed mid-way, one in ten invalid. Exits
non-zero if any answer is a server error, a valid request fails, or a
stream that was read to its end has no finish_reason.
"""

import random
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
from openai import OpenAI

base_url, total = sys.argv[1], int(sys.argv[2])
client = OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)


def one(i):
    rng = random.Random(i)
    messages = [{"role": "user", "content": f"Soak {i}: say something."}]
    if rng.random() < 0.1:
        try:
            client.chat.completions.create(model="tiny-deepseek-v3", messages=messages, temperature=9)
        except openai.BadRequestError:
            return "invalid"
        raise AssertionError(f"request {i}: an invalid temperature was accepted")
    max_tokens = rng.randint(1, 32)
    if rng.random() < 0.5:
        stream = client.chat.completions.create(
            model="tiny-deepseek-v3", messages=messages, max_tokens=max_tokens, stream=True
        )
        if rng.random() < 0.3:
            for _ in stream:
                break
            stream.close()
            return "cancelled"
        finishes = [c.choices[0].finish_reason for c in stream if c.choices and c.choices[0].finish_reason]
        assert finishes, f"request {i}: the stream ended without a finish_reason"
        return "stream"
    if rng.random() < 0.5:
        r = client.completions.create(
            model="tiny-deepseek-v3", prompt=f"Soak {i}", max_tokens=max_tokens, logprobs=2
        )
    else:
        r = client.chat.completions.create(
            model="tiny-deepseek-v3", messages=messages, max_tokens=max_tokens, n=2
        )
    assert all(c.finish_reason in ("stop", "length") for c in r.choices), r
    return "whole"


with ThreadPoolExecutor(max_workers=8) as pool:
    kinds = list(pool.map(one, range(total)))
print("soak client done:", {k: kinds.count(k) for k in sorted(set(kinds))}, flush=True)
