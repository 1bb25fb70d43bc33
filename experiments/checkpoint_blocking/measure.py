"""How long does an asynchronous checkpoint save block the train loop?

Builds a config's full train state (params + AdamW moments, born sharded), then saves it every
"step" through the same `Checkpointer.save` the loop calls, timing what the caller waits for
(device-to-host copy, plus waiting for the previous save when one is still being written)
separately from the background write and commit. Between saves a jitted update changes every
array, as a train step would.

    JAX_PLATFORMS=cpu python experiments/checkpoint_blocking/measure.py configs/clm/tiny.py
    JAX_PLATFORMS=cpu python experiments/checkpoint_blocking/measure.py \
        configs/clm/llama_125m.py:cpu

Prints one JSON line per config; see README.md beside this file for the numbers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time

import jax
import numpy as np

from llmos_jax import checkpoint
from llmos_jax.config import load_config
from llmos_jax.train.init import init_train_state
from llmos_jax.train.loop import build_experiment


def measure(spec: str, saves: int, gap_s: float, workdir: str) -> dict:
    config = load_config(spec, ["wandb.mode=disabled"])
    exp = build_experiment(config)
    state, _ = init_train_state(
        exp.eval_model, exp.tx, exp.mesh, exp.rules, config.data.seq_len, config.seed
    )

    # Random values everywhere (fresh AdamW moments are zeros, which would compress unrealistically
    # well), then a stand-in for a train step: every array changes, its buffers donated as in the
    # real step.
    def noise(s):
        leaves, tree = jax.tree.flatten(s)
        keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
        return tree.unflatten(
            [
                x + jax.random.normal(k, x.shape, x.dtype) if x.dtype.kind == "f" else x
                for x, k in zip(leaves, keys)
            ]
        )

    state = jax.block_until_ready(jax.jit(noise, out_shardings=exp.shardings)(state))
    bump = jax.jit(
        lambda s: jax.tree.map(lambda x: x * 0.999 + 1e-3 if x.dtype.kind == "f" else x, s),
        donate_argnums=0,
        out_shardings=exp.shardings,
    )
    state = jax.block_until_ready(bump(state))
    n_bytes = sum(x.nbytes for x in jax.tree.leaves(state))
    ckpt = checkpoint.Checkpointer(workdir, keep=2)
    blocking, background = [], []
    try:
        for step in range(1, saves + 1):
            blocking.append(ckpt.save(step, state, {"step": step}))
            start = time.perf_counter()
            ckpt.wait()  # how long the rest takes in the background
            background.append(time.perf_counter() - start)
            state = jax.block_until_ready(bump(state))
            time.sleep(gap_s)
    finally:
        ckpt.close()
    return {
        "config": spec,
        "devices": jax.device_count(),
        "state_MiB": round(n_bytes / 2**20, 1),
        "first_save_blocking_s": round(blocking[0], 3),
        "later_saves_blocking_s_median": round(float(np.median(blocking[1:])), 3),
        "later_saves_background_s_median": round(float(np.median(background[1:])), 3),
        "checkpoint_MiB": round(checkpoint.step_size(workdir, saves) / 2**20, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("configs", nargs="+", help="configs/FILE.py[:ARG]")
    p.add_argument("--saves", type=int, default=4)
    p.add_argument("--gap-s", type=float, default=0.0, help="pause between saves")
    args = p.parse_args()
    for spec in args.configs:
        workdir = tempfile.mkdtemp(prefix="ckpt_blocking_")
        try:
            print(json.dumps(measure(spec, args.saves, args.gap_s, workdir)), flush=True)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
