"""Serving speed: `llmos serve` (continuous batching) next to transformers' `generate` on CPU.

Question: on the same random weights, what time to first token and what decode tokens/s does
`llmos serve` reach for 1, 8 and 64 concurrent streams, and how does that compare with
transformers' `generate` (PyTorch, CPU) serving the same streams as one static batch?

    .venv/bin/python experiments/serving/bench.py                      # tiny and 125m; 1/8/64
    .venv/bin/python experiments/serving/bench.py --presets tiny --streams 1,8 --rounds 1
    .venv/bin/python experiments/serving/bench.py --out experiments/serving/results.json

Per preset: the model (configs/clm/tiny.py or configs/clm/llama_125m.py shape, f32) gets random
weights from its own init, exported with llmos_jax.interop into a Hugging Face directory (plus a
2,048-piece SentencePiece tokenizer; prompts are token ids, so it only names tokens). That one
directory is what `llmos serve` (a subprocess on 127.0.0.1, --max-batch 64) and transformers
load, so both run the same weights; the first stream's greedy tokens are compared as a check.

Measured per row, after an untimed warm-up round that compiles every shape:
* ours: N streaming clients (httpx2, raw SSE) send a P-token prompt at once, greedy, T tokens
  (ignore_eos). TTFT = median over streams of request start -> first token chunk; decode tok/s =
  the sum over streams of (tokens - 1) / (last token - first token); e2e tok/s = all tokens /
  (last chunk - first request).
* transformers: one `generate` on the N prompts as a batch (its best case: a static batch that
  all starts together, nothing queued), greedy, T new tokens (no EOS id, so no row ends
  early). TTFT = time of generate(max_new_tokens=1); decode tok/s = N (T - 1) / (total -
  TTFT); e2e tok/s = N T / total.
Rows alternate ours / transformers for --rounds rounds (the machine may be shared); medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PRESETS = {"tiny": "configs/clm/tiny.py", "125m": "configs/clm/llama_125m.py"}
NEW_TOKENS = {"tiny": 128, "125m": 64}


def make_model_dir(preset: str, out: Path) -> Path:
    """Random-init weights of the preset, exported as a Hugging Face directory."""
    import flax.linen as nn
    import jax

    from llmos_jax import interop
    from llmos_jax.config import load_config
    from llmos_jax.data import clean_text, train_tokenizer
    from llmos_jax.data.sources import pydoc_documents
    from llmos_jax.models import build_model

    config = load_config(str(REPO / PRESETS[preset]), ["model.dtype=float32"])
    model = build_model(config)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), *model.init_args(8))
    params = jax.device_get(nn.meta.unbox(variables["params"]))
    docs = [clean_text(d.text) for d in pydoc_documents()]
    tok = train_tokenizer(docs, 2048)
    hf_config = interop.hf_config_from(model.cfg, bos_id=tok.bos_id, eos_id=tok.eos_id)
    interop.save_hf_model(out, hf_config, interop.params_to_hf(params, model.cfg))
    tok.save(out / "tokenizer.model")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, port: int, max_batch: int, max_len: int, log: Path):
    cmd = [
        sys.executable,
        "-m",
        "llmos_jax.cli",
        "serve",
        "--workdir",
        str(model_dir),
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-len",
        str(max_len),
    ]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    import httpx2

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llmos serve exited: see {log}")
        try:
            if httpx2.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx2.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise RuntimeError("llmos serve did not come up in 600 s")


async def _stream(http, url: str, prompt: list[int], new: int) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": new,
        "temperature": 0.0,
        "stream": True,
        "ignore_eos": True,
        "logprobs": 0,
        "return_tokens_as_token_ids": True,
    }
    t0 = time.perf_counter()
    times, ids = [], []
    async with http.stream("POST", url, json=body) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                tokens = (choice.get("logprobs") or {}).get("tokens") or []
                ids += [int(t.split(":")[1]) for t in tokens]
                times += [time.perf_counter()] * len(tokens)
    return {"start": t0, "times": times, "ids": ids}


async def _ours_round(port: int, prompts: list[list[int]], new: int) -> list[dict]:
    import httpx2

    url = f"http://127.0.0.1:{port}/v1/completions"
    limits = httpx2.Limits(max_connections=len(prompts) + 4)
    async with httpx2.AsyncClient(timeout=600, limits=limits) as http:
        return await asyncio.gather(*[_stream(http, url, p, new) for p in prompts])


def ours(port: int, prompts: list[list[int]], new: int) -> dict:
    streams = asyncio.run(_ours_round(port, prompts, new))
    assert all(len(s["ids"]) == new for s in streams), "a stream ended early"
    ttft = statistics.median(s["times"][0] - s["start"] for s in streams)
    decode = sum((new - 1) / (s["times"][-1] - s["times"][0]) for s in streams)
    span = max(s["times"][-1] for s in streams) - min(s["start"] for s in streams)
    return {
        "ttft_s": ttft,
        "decode_tps": decode,
        "e2e_tps": len(prompts) * new / span,
        "first_ids": streams[0]["ids"],
    }


def transformers_generate(model, prompts: list[list[int]], new: int) -> dict:
    import torch

    ids = torch.tensor(prompts)
    kw = dict(attention_mask=torch.ones_like(ids), do_sample=False, pad_token_id=0)
    with torch.no_grad():
        t0 = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **kw)
        ttft = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, max_new_tokens=new, **kw)
        total = time.perf_counter() - t0
    n = len(prompts)
    return {
        "ttft_s": ttft,
        "decode_tps": n * (new - 1) / (total - ttft),
        "e2e_tps": n * new / total,
        "first_ids": out[0, ids.shape[1] :].tolist(),
    }


def median_row(rows: list[dict]) -> dict:
    keys = ("ttft_s", "decode_tps", "e2e_tps")
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def run_preset(preset: str, args, work: Path) -> list[dict]:
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    model_dir = make_model_dir(preset, work / preset)
    port = free_port()
    log = work / f"serve-{preset}.log"
    server = start_server(model_dir, port, args.max_batch, args.max_len, log)
    try:
        hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        hf.generation_config.eos_token_id = None
        new = args.new_tokens or NEW_TOKENS[preset]
        results = []
        for n in args.streams:
            rng = np.random.default_rng(n)
            prompts = rng.integers(4, 2048, (n, args.prompt_len)).tolist()
            ours(port, prompts, new)  # warm-up: compiles every shape this row uses
            transformers_generate(hf, prompts[:1], 2)
            mine, theirs = [], []
            for _ in range(args.rounds):
                load = os.getloadavg()[0]
                mine.append(ours(port, prompts, new))
                theirs.append(transformers_generate(hf, prompts, new))
                print(
                    f"{preset} x{n}: ours {mine[-1]['decode_tps']:.0f} tok/s, transformers "
                    f"{theirs[-1]['decode_tps']:.0f} tok/s (load {load:.1f})",
                    flush=True,
                )
            same = mine[0]["first_ids"] == theirs[0]["first_ids"]
            for system, rows in (("llmos serve", mine), ("transformers generate", theirs)):
                row = {"preset": preset, "streams": n, "system": system, **median_row(rows)}
                row["same_greedy_tokens"] = same
                row["load_avg"] = load
                results.append(row)
            print(markdown(results[-2:]), flush=True)  # each row as soon as it is measured
        return results
    finally:
        server.terminate()
        server.wait(30)


def markdown(results: list[dict]) -> str:
    lines = [
        "| preset | streams | system | TTFT (ms) | decode tok/s | e2e tok/s | decode vs HF "
        "| same greedy tokens |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ref = next(
            x
            for x in results
            if x["preset"] == r["preset"]
            and x["streams"] == r["streams"]
            and x["system"] == "transformers generate"
        )
        ratio = r["decode_tps"] / ref["decode_tps"]
        lines.append(
            f"| {r['preset']} | {r['streams']} | {r['system']} | {r['ttft_s'] * 1e3:.0f} "
            f"| {r['decode_tps']:.0f} | {r['e2e_tps']:.0f} | {ratio:.2f}x "
            f"| {'yes' if r['same_greedy_tokens'] else 'NO'} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,125m")
    p.add_argument("--streams", default="1,8,64")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=0, help="0: 128 (tiny), 64 (125m)")
    p.add_argument("--max-batch", type=int, default=64, help="the server's slots")
    p.add_argument("--max-len", type=int, default=256, help="the server's context per slot")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            results += run_preset(preset, args, Path(tmp))
    print(markdown(results))
    import torch

    host = {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    if args.out:
        Path(args.out).write_text(json.dumps({"host": host, "results": results}, indent=2))


if __name__ == "__main__":
    main()
