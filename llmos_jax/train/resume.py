"""Starting a run where it stopped: restore the newest usable checkpoint (or initialise), and say
what differs from the run that wrote it.

Exact resume rests on three facts: the checkpoint holds the whole TrainState (params, optimizer
state, step, the base RNG key from which each step's key is folded), batch s is a pure function
of (seed, s), and the metrics file drops lines past the restored step. So on the same mesh a
resumed run repeats an uninterrupted one bit for bit; on another mesh, up to float reduction
order.
"""

from __future__ import annotations

import shlex
import sys
from typing import Any

from llmos_jax import checkpoint, provenance
from llmos_jax.train.init import init_train_state


def data_position(step: int, config, data) -> dict[str, Any]:
    """The data iterator's state after `step` steps, saved with the checkpoint (JSON)."""
    b = int(config.train.global_batch_size)
    return {
        "step": int(step),
        "examples_seen": int(step) * b,
        "global_batch_size": b,
        "seed": int(config.seed),
        "data_fingerprint": data.fingerprint,
        "train_rows": int(data.train["tokens"].shape[0]),
    }


def _data_warnings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    out = []
    for key, what in (
        ("seed", "data seed"),
        ("global_batch_size", "global batch size"),
        ("data_fingerprint", "data fingerprint"),
    ):
        if key in saved and saved[key] != current[key]:
            out.append(f"{what} {saved[key]} -> {current[key]}")
    if out:
        out.append("the examples after the resume differ from an uninterrupted run's")
    return out


def restore_or_init(exp, ckpt: checkpoint.Checkpointer, record: dict, data):
    """(state, start step, notes): the newest usable checkpoint, or a fresh state at step 0.

    `notes` are lines for the user: where the run resumed from, and what differs between the
    code, packages, devices or data that wrote the checkpoint and the current ones.
    """
    c = exp.config
    restored = ckpt.restore_latest(exp.abstract_state)
    if restored is None:
        state, _ = init_train_state(
            exp.eval_model, exp.tx, exp.mesh, exp.rules, c.data.seq_len, c.seed
        )
        return state, 0, []
    start = int(restored.data["step"])
    notes = [f"Resuming from checkpoint {ckpt.directory / str(restored.step)} (step {start})."]
    recorded = (restored.manifest or {}).get("provenance")
    changed = provenance.differences(recorded, record) if recorded else []
    changed += _data_warnings(restored.data, data_position(start, c, data))
    if changed:
        notes.append("warning: this differs from what wrote the checkpoint: " + "; ".join(changed))
    return restored.state, start, notes


def preempted_message(step: int, workdir: str) -> str:
    again = "run the same command again"
    if sys.argv[1:2] in (["train"], ["demo"]):  # called from the CLI: show the exact command
        again += f" ({shlex.join(['llmos', *sys.argv[1:]])})"
    return (
        f"Preempted: saved and committed step {step} to {checkpoint.step_path(workdir, step)}. "
        f"To resume, {again} or `llmos train --resume-from {workdir}`."
    )
