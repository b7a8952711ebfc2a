"""Alternates two ferroseek binaries over HTTP: aggregate decode tokens/s.

    .venv/bin/python benches/compare_http.py OLD_BINARY NEW_BINARY MODEL_DIR [ROUNDS]

Each round starts each binary in turn (the order alternates between rounds)
on MODEL_DIR at q8_0 and q4_k, and measures 1, 4 and 16 concurrent
streaming `/v1/completions` (16-token id prompts, 64 tokens each, greedy,
`ignore_eos`), best of 3 per point, as `cargo bench --bench serving` does.
Prints the median of the rounds per point for each binary and their ratio.
MODEL_DIR is typically `target/bench-models/random-v2-lite-265m-bf16`,
written by the serving bench. Needs the `openai` package's HTTP client
(`pip install openai`), which brings httpx.
"""

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time

try:
    import httpx
except ImportError:  # openai 3 ships its client as httpx2
    import httpx2 as httpx

STREAMS = [1, 4, 16]
QUANTS = ["q8_0", "q4_k"]


def start(binary, model, quant):
    proc = subprocess.Popen(
        [binary, "serve", "--port", "0", "--kv-cache-memory", "256MiB",
         "--model", model, "--served-model-name", "bench",
         "--dtype", "f32", "--quantize", quant],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, env={"RUST_LOG": "info"},
    )
    for line in proc.stderr:
        found = re.search(r"listening on (http://[^\s\"]+)", line)
        if found:
            return proc, found.group(1)
    raise RuntimeError(f"{binary} exited before listening")


async def one(client, base, i):
    prompt = [(t * 131 + i * 977) % 3900 + 4 for t in range(16)]
    body = {"model": "bench", "prompt": prompt, "max_tokens": 64,
            "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    tokens = 0
    async with client.stream("POST", base + "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: {") and '"usage":{' in line:
                tokens = json.loads(line[6:])["usage"]["completion_tokens"]
    return tokens


async def measure(base):
    async with httpx.AsyncClient(timeout=300) as client:
        while True:
            try:
                if (await client.get(base + "/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
        await one(client, base, 99)  # warm-up
        out = {}
        for streams in STREAMS:
            best = 0.0
            for _ in range(3):
                t = time.time()
                done = await asyncio.gather(*[one(client, base, i) for i in range(streams)])
                best = max(best, sum(done) / (time.time() - t))
            out[streams] = best
        return out


def main():
    old, new, model = sys.argv[1:4]
    rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 6
    results = {}
    for r in range(rounds):
        for name, binary in ([("old", old), ("new", new)] if r % 2 == 0
                             else [("new", new), ("old", old)]):
            for quant in QUANTS:
                proc, base = start(binary, model, quant)
                try:
                    for streams, tps in asyncio.run(measure(base)).items():
                        results.setdefault((quant, streams, name), []).append(tps)
                finally:
                    proc.kill()
                    proc.wait()
        print(f"round {r + 1} of {rounds} done", file=sys.stderr, flush=True)
    print("| weights | streams | old tok/s | new tok/s | new/old |")
    print("|---|---:|---:|---:|---:|")
    for quant in QUANTS:
        for streams in STREAMS:
            o = statistics.median(results[(quant, streams, "old")])
            n = statistics.median(results[(quant, streams, "new")])
            print(f"| {quant} | {streams} | {o:.1f} | {n:.1f} | {n / o:.3f} |")


if __name__ == "__main__":
    main()
