"""The train loop: config -> data -> sharded state -> steps -> eval / checkpoints / metrics.

Reading `train()` top to bottom shows all the control flow of a run.
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import numpy as np

from llmos_jax import checkpoint, objectives, perf, provenance
from llmos_jax.config import resolved_model
from llmos_jax.config_checks import validate
from llmos_jax.mesh import axis_rules, host_to_global, make_mesh
from llmos_jax.metrics import MetricsLogger
from llmos_jax.models import build_model
from llmos_jax.train.init import abstract_train_state
from llmos_jax.train.optim import make_optimizer
from llmos_jax.train.preemption import PreemptionGuard
from llmos_jax.train.resume import data_position, preempted_message, restore_or_init
from llmos_jax.train.step import jit_train_step, make_eval_step, make_train_step


class NonFiniteError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


@dataclasses.dataclass
class Experiment:
    """Everything built from a config that train, eval and generate share."""

    config: object
    mesh: object
    rules: tuple
    model: object  # dropout on (training)
    eval_model: object  # deterministic
    tx: object
    schedule: object
    abstract_state: object  # ShapeDtypeStructs with shardings: what checkpoints restore into
    shardings: object

    @property
    def param_shardings(self):
        return self.shardings.params


def build_experiment(config) -> Experiment:
    """Validates the config (before anything compiles) and builds mesh, model and optimizer."""
    validate(config, jax.device_count(), jax.process_count())
    mesh = make_mesh(config)
    rules = axis_rules(config)
    model = build_model(config, deterministic=False)
    eval_model = build_model(config, deterministic=True)
    tx, schedule = make_optimizer(config)
    abstract, shardings = abstract_train_state(
        eval_model, tx, mesh, rules, config.data.seq_len, config.seed
    )
    return Experiment(config, mesh, rules, model, eval_model, tx, schedule, abstract, shardings)


def evaluate(
    exp: Experiment, params, frozen, batches, eval_step=None, tokenizer=None
) -> dict[str, float]:
    """Held-out metrics over all `batches`, token-weighted and exact: `eval/loss`,
    `eval/perplexity` (exp of the loss: meaningful for token objectives) and `eval/<metric>` for
    every other metric the objective reports."""
    if eval_step is None:
        loss_fn = objectives.build(exp.config, exp.eval_model, tokenizer)
        eval_step = make_eval_step(loss_fn, exp.param_shardings, exp.mesh, exp.rules)
    totals, count = {}, 0.0
    for batch in batches:
        sums, n = eval_step(params, frozen, host_to_global(batch, exp.mesh))
        for k, v in sums.items():
            totals[k] = totals.get(k, 0.0) + float(v)
        count += float(n)
    out = {f"eval/{k}": v / max(count, 1.0) for k, v in totals.items()}
    loss = out.get("eval/loss", 0.0)
    out.update({"eval/perplexity": math.exp(min(loss, 50.0)), "eval/tokens": count})
    return out


def _must_block_each_step() -> bool:
    # jax <= 0.10.2 on the CPU backend with several devices hangs when many steps containing
    # collectives are queued (see docs/environment.md); blocking is cheap there. Never on GPU/TPU.
    return jax.default_backend() == "cpu" and jax.device_count() > 1


def _summarise(window: list[dict]) -> dict[str, float]:
    """Means of the per-step metrics since the last log (lr and counters: the last value)."""
    host = jax.device_get(window)
    out = {}
    for key in host[-1]:
        values = np.asarray([m[key] for m in host], dtype=np.float64)
        last_only = key in ("train/lr", "train/nonfinite_streak")
        out[key] = float(values[-1] if last_only else values.mean())
    out["train/nonfinite_streak_max"] = float(max(m["train/nonfinite_streak"] for m in host))
    return out


def train(config, workdir: str, *, show_progress: bool = True, data=None) -> dict[str, float]:
    """Trains `config` into `workdir`, resuming from its latest checkpoint. Returns final metrics.

    On SIGTERM it finishes the current step, saves, waits for the commit and returns with
    "train/preempted_at_step" in the metrics.
    """
    # Installed first: a notice that arrives while compiling still ends in a checkpoint.
    with PreemptionGuard() as preemption:
        return _train(config, workdir, preemption, show_progress, data)


def _train(config, workdir: str, preemption, show_progress: bool, data) -> dict[str, float]:
    from llmos_jax.data import TrainBatches, build_data, eval_batches

    exp = build_experiment(config)
    c = config
    data = data or build_data(c, workdir)
    record = provenance.collect(c, exp.mesh, exp.rules, data)
    provenance.write_run_files(workdir, c, data.tokenizer, record)
    loss_fn = objectives.build(c, exp.model, data.tokenizer)
    eval_loss_fn = objectives.build(c, exp.eval_model, data.tokenizer)
    train_step = jit_train_step(
        make_train_step(loss_fn, exp.tx, exp.schedule, c.train.grad_accum_steps),
        exp.shardings,
        exp.mesh,
        exp.rules,
    )
    eval_step = make_eval_step(eval_loss_fn, exp.param_shardings, exp.mesh, exp.rules)
    pid, nproc = jax.process_index(), jax.process_count()
    held_out = eval_batches(data.eval, c.train.global_batch_size, pid, nproc, c.train.eval_batches)

    ckpt = checkpoint.Checkpointer(
        workdir, keep=c.train.keep_checkpoints, keep_every=c.train.keep_every
    )
    state, start, notes = restore_or_init(exp, ckpt, record, data)

    model_dims = resolved_model(c.model)
    flops_per_token = perf.train_flops_per_token(model_dims, c.data.seq_len)
    peak, _ = perf.peak_flops()
    tokens_per_step = c.train.global_batch_size * c.data.seq_len
    batches = TrainBatches(data.train, c.train.global_batch_size, c.seed, pid, nproc)
    block = _must_block_each_step()
    final: dict[str, float] = {}
    logger = MetricsLogger(
        workdir,
        c,
        total_steps=c.train.steps,
        start_step=start,
        is_main_process=pid == 0,
        show_progress=show_progress,
    )
    try:
        for note in notes:
            logger.message(note)
        if start >= c.train.steps:
            logger.message(f"{workdir} already finished {start} steps; nothing to train.")
        window, t0, blocked = [], time.perf_counter(), 0.0
        for step in range(start, c.train.steps):
            state, metrics = train_step(state, host_to_global(batches.batch(step), exp.mesh))
            if block:
                jax.block_until_ready(metrics)
            window.append(metrics)
            done = step + 1
            # Asked on every host at every step; true at the same step everywhere.
            stop = preemption.reached(done) and done < c.train.steps
            if done % c.train.log_every == 0 or done == c.train.steps or stop:
                row = _summarise(window)
                elapsed = time.perf_counter() - t0
                row["perf/tokens_per_s"] = tokens_per_step * len(window) / elapsed
                row["perf/step_time_s"] = elapsed / len(window)
                row["perf/mfu"] = perf.mfu(
                    row["perf/tokens_per_s"], flops_per_token, jax.device_count(), peak
                )
                if blocked:  # what saves since the last row cost the loop (see checkpoint.py)
                    row["perf/checkpoint_blocking_s"], blocked = blocked, 0.0
                if row["train/nonfinite_streak_max"] >= c.train.max_consecutive_nonfinite:
                    raise NonFiniteError(
                        f"stopping at step {done}: {int(row['train/nonfinite_streak_max'])} "
                        f"consecutive updates had a non-finite loss or gradient "
                        f"(train.max_consecutive_nonfinite={c.train.max_consecutive_nonfinite}); "
                        f"they were skipped, so the last checkpoint under {workdir} is intact. "
                        f"Try a lower optim.lr, more optim.warmup_steps or model.dtype=float32."
                    )
                if done % c.train.eval_every == 0 or done == c.train.steps:
                    row.update(evaluate(exp, state.params, state.frozen, held_out, eval_step))
                logger.log(done, row)
                final = row
                window, t0 = [], time.perf_counter()
            elif done % c.train.eval_every == 0:
                final = evaluate(exp, state.params, state.frozen, held_out, eval_step)
                logger.log(done, final)
            if done % c.train.checkpoint_every == 0 or done == c.train.steps or stop:
                blocked += ckpt.save(done, state, data_position(done, c, data), record)
            if stop:
                ckpt.wait()  # committed before we exit: the scheduler may kill us any moment
                logger.message(preempted_message(done, workdir))
                final = {**final, "train/preempted_at_step": float(done)}
                break
    finally:
        ckpt.close()
        logger.close()
    return final
