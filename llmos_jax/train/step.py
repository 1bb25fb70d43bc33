"""The one jitted, sharded train step shared by every objective, plus the eval step.

The step never knows the loss: it receives `loss_fn(params, batch, rng, frozen) -> (loss,
metrics)`. Only `params` is differentiated; `frozen` rides along untouched.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from llmos_jax.mesh import batch_sharding, sharding_context
from llmos_jax.train.state import TrainState


def _split_microbatches(batch: dict, num: int) -> dict:
    """[B, ...] -> [A, B/A, ...] such that micro-batch a takes rows a, a+A, a+2A, ...

    Rows are sharded in contiguous blocks over devices; striding keeps every micro-batch spread
    over all devices (no resharding) as long as each device's block divides by A.
    """
    return jax.tree.map(
        lambda x: x.reshape(x.shape[0] // num, num, *x.shape[1:]).swapaxes(0, 1), batch
    )


def _grads(loss_fn, params, batch, rng, frozen, accum_steps: int):
    """(loss, metrics, grads), averaged over micro-batches weighted by metrics['num_tokens']."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if accum_steps == 1:
        (loss, metrics), grads = grad_fn(params, batch, rng, frozen)
        return loss, metrics, grads

    micro = _split_microbatches(batch, accum_steps)

    def body(carry, xs):
        mb, i = xs
        # Slices of the scanned input lose their sharding; restore the batch split so the
        # partitioner does not replicate the micro-batch (and the embedding gather) in full.
        mb = jax.tree.map(
            lambda x: nn.with_logical_constraint(x, ("batch",) + (None,) * (x.ndim - 1)), mb
        )
        (loss, metrics), grads = grad_fn(params, mb, jax.random.fold_in(rng, i), frozen)
        w = metrics.get("num_tokens", jnp.float32(1.0))
        acc_g, acc_l, acc_m, acc_w = carry
        acc_g = jax.tree.map(lambda a, g: a + w * g, acc_g, grads)
        acc_m = jax.tree.map(lambda a, m: a + w * m, acc_m, metrics)
        return (acc_g, acc_l + w * loss, acc_m, acc_w + w), None

    zeros_g = jax.tree.map(jnp.zeros_like, params)
    mb0 = jax.tree.map(lambda x: x[0], micro)
    _, metrics_shape = jax.eval_shape(loss_fn, params, mb0, rng, frozen)
    zeros_m = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)
    init = (zeros_g, jnp.float32(0.0), zeros_m, jnp.float32(0.0))
    (g, loss, m, w), _ = jax.lax.scan(body, init, (micro, jnp.arange(accum_steps)))
    w = jnp.maximum(w, 1e-9)
    grads = jax.tree.map(lambda a: a / w, g)
    metrics = jax.tree.map(lambda a: a / w, m)
    if "num_tokens" in metrics:
        metrics["num_tokens"] = w  # the total, not a weighted mean
    return loss / w, metrics, grads


def _nonfinite_streak(opt_state) -> jax.Array:
    """Consecutive skipped updates, read from optax.apply_if_finite's state."""
    return jnp.asarray(opt_state.notfinite_count, jnp.int32)


def make_train_step(
    loss_fn: Callable,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    accum_steps: int = 1,
):
    """The pure step: (state, batch) -> (state, metrics). Metric keys are `train/...`."""

    def step(state: TrainState, batch: dict):
        rng = jax.random.fold_in(state.rng, state.step)
        loss, metrics, grads = _grads(loss_fn, state.params, batch, rng, state.frozen, accum_steps)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        out = {f"train/{k}" if k != "loss" else "train/xent": v for k, v in metrics.items()}
        out.update(
            {
                "train/loss": loss,
                "train/grad_norm": optax.tree.norm(grads),
                "train/update_norm": optax.tree.norm(updates),
                "train/param_norm": optax.tree.norm(params),
                "train/lr": schedule(state.step),
                "train/nonfinite_streak": _nonfinite_streak(opt_state),
            }
        )
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, out

    return step


def jit_train_step(step_fn, state_shardings, mesh, rules):
    """jax.jit with explicit shardings and the state donated (updated in place on device)."""
    jitted = jax.jit(
        step_fn,
        in_shardings=(state_shardings, batch_sharding(mesh)),
        out_shardings=(state_shardings, None),
        donate_argnums=0,
    )

    def run(state, batch):
        with sharding_context(mesh, rules):
            return jitted(state, batch)

    run.jitted = jitted
    return run


def make_eval_step(loss_fn: Callable, param_shardings, mesh, rules):
    """(params, frozen, batch) -> ({metric: value * n}, n), n = metrics["num_tokens"].

    Sums rather than means, so evaluation over many (partly padded) batches aggregates exactly.
    """

    def eval_step(params, frozen, batch):
        _, metrics = loss_fn(params, batch, jax.random.PRNGKey(0), frozen)
        n = metrics["num_tokens"]
        sums = {k: v * n for k, v in metrics.items() if k != "num_tokens"}
        return sums, n

    jitted = jax.jit(eval_step, in_shardings=(param_shardings, None, batch_sharding(mesh)))

    def run(params, frozen, batch):
        with sharding_context(mesh, rules):
            return jitted(params, frozen, batch)

    return run
