"""How fast can one decode step be on this CPU? The weight matmuls alone, in PyTorch and in XLA.

Question: the serving goal is 3x transformers' decode tokens/s at 8 concurrent streams. A decode
step of N streams multiplies an [N, d] activation by every weight matrix of the model once. This
script times exactly those matmuls, with nothing else (no attention, norms, sampling, Python
loop, HTTP), as a lower bound on the step time of any implementation built on that library:

* torch: `x @ w` per weight matrix, in order, each weight its own tensor (PyTorch's CPU matmul,
  what transformers' `generate` uses);
* xla: the same chain under one `jax.jit` (what llmos_jax's engine compiles to on CPU);
* read: `sum(w)` over every weight in one jitted call: reading the weights once from memory.

It prints, per preset and stream count, those floors in ms per step next to the step time that 3x
transformers' measured decode tokens/s would need (from experiments/serving/results.json when it
holds that row). A goal whose step time is below the torch and xla floors cannot be met by a
framework-level change on this machine.

    .venv/bin/python experiments/serving/floor.py                 # tiny and 125m, 8 streams
    .venv/bin/python experiments/serving/floor.py --streams 1,8,64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# (d_model, n_layers, n_heads, n_kv_heads, d_ff, vocab) of configs/clm/tiny.py and llama_125m.py.
PRESETS = {"tiny": (256, 4, 8, 4, 768, 2048), "125m": (768, 12, 12, 12, 2048, 32000)}


def weight_shapes(d: int, layers: int, heads: int, kv_heads: int, ff: int, vocab: int):
    """The [in, out] matmuls of one Llama decode step, in order (the embedding is a gather)."""
    hd = d // heads
    per_layer = [(d, heads * hd), (d, kv_heads * hd), (d, kv_heads * hd), (heads * hd, d)]
    per_layer += [(d, ff), (d, ff), (ff, d)]
    return per_layer * layers + [(d, vocab)]


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def floors(preset: str, streams: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    shapes = weight_shapes(*PRESETS[preset])
    rng = np.random.default_rng(0)
    weights = [(rng.standard_normal(s, np.float32) * 0.02) for s in shapes]
    x = rng.standard_normal((streams, shapes[0][0]), np.float32)

    # One input as wide as the widest matrix; each product reads the columns it needs.
    widest = max(s[0] for s in shapes)
    wide = np.pad(x, ((0, 0), (0, widest - x.shape[1])))
    tw, tx = [torch.from_numpy(w) for w in weights], torch.from_numpy(wide)
    jw, jx = [jnp.asarray(w) for w in weights], jnp.asarray(wide)

    def torch_chain():
        with torch.no_grad():
            for w in tw:
                tx[:, : w.shape[0]] @ w

    @jax.jit
    def xla_chain(x, ws):  # every product feeds the sum, so none is dead code
        return sum(jnp.sum(x[:, : w.shape[0]] @ w) for w in ws)

    @jax.jit
    def read(ws):
        return sum(jnp.sum(w) for w in ws)

    mb = sum(w.nbytes for w in weights) / 1e6
    return {
        "preset": preset,
        "streams": streams,
        "weight_mb": mb,
        "torch_ms": _median_ms(torch_chain, repeats),
        "xla_ms": _median_ms(lambda: xla_chain(jx, jw).block_until_ready(), repeats),
        "read_ms": _median_ms(lambda: read(jw).block_until_ready(), repeats),
    }


def goal_ms(preset: str, streams: int) -> float | None:
    """Step time of 3x transformers' decode tok/s in results.json, if it has the row."""
    path = REPO / "experiments/serving/results.json"
    if not path.exists():
        return None
    for r in json.loads(path.read_text())["results"]:
        if (r["preset"], r["streams"], r["system"]) == (preset, streams, "transformers generate"):
            return 1e3 * streams / (3 * r["decode_tps"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,125m")
    p.add_argument("--streams", default="8")
    p.add_argument("--repeats", type=int, default=30)
    args = p.parse_args()
    from llmos_jax.host_memory import tune_malloc_for_cpu

    tune_malloc_for_cpu()
    print("ms per decode step, weight matmuls only (f32); goal = 3x transformers (results.json)")
    print("| preset | streams | weights MB | read once | torch matmuls | XLA matmuls | 3x goal |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        for n in (int(s) for s in args.streams.split(",")):
            f = floors(preset, n, args.repeats)
            goal = goal_ms(preset, n)
            print(
                f"| {preset} | {n} | {f['weight_mb']:.0f} | {f['read_ms']:.1f} | "
                f"{f['torch_ms']:.1f} | {f['xla_ms']:.1f} | "
                f"{'-' if goal is None else f'{goal:.1f}'} |"
            )


if __name__ == "__main__":
    main()
