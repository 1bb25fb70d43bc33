"""Optimizer: AdamW with warmup + decay, global-norm clipping, no decay on norms and biases."""

from __future__ import annotations

import jax
import optax


def make_schedule(config) -> optax.Schedule:
    """Linear warmup 0 -> lr over warmup_steps, then cosine / linear / constant to end_lr."""
    o, steps = config.optim, int(config.train.steps)
    peak, end = float(o.lr), float(o.lr) * float(o.end_lr_ratio)
    warm = int(o.warmup_steps)
    rest = max(steps - warm, 1)
    if o.decay == "cosine":
        decay = optax.cosine_decay_schedule(peak, rest, alpha=float(o.end_lr_ratio))
    elif o.decay == "linear":
        decay = optax.linear_schedule(peak, end, rest)
    else:
        decay = optax.constant_schedule(peak)
    if warm == 0:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warm), decay], [warm])


def decay_mask(params):
    """True where weight decay applies: matmul kernels and embeddings, never norms or biases."""

    def decays(path, _):
        # The last dict key names the leaf; boxed (logically partitioned) leaves add attribute keys
        # after it, which are skipped.
        keys = [p.key for p in path if isinstance(p, jax.tree_util.DictKey)]
        return bool(keys) and keys[-1] in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(config) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optax chain and its learning-rate schedule.

    Wrapped in apply_if_finite: an update with a non-finite gradient is skipped (parameters and
    moments untouched) and counted; the loop stops the run after too many in a row.
    """
    o = config.optim
    schedule = make_schedule(config)
    parts = []
    if o.clip_norm > 0:
        parts.append(optax.clip_by_global_norm(float(o.clip_norm)))
    parts.append(
        optax.adamw(
            schedule, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay, mask=decay_mask
        )
    )
    # The loop enforces the limit itself (with a clear message), so let apply_if_finite never give
    # up and apply a non-finite update.
    tx = optax.apply_if_finite(optax.chain(*parts), max_consecutive_errors=2**30)
    return tx, schedule
