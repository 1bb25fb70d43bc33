"""Objectives: name -> factory(config, model) -> loss_fn(params, batch, rng, frozen).

Every loss_fn returns (loss, metrics). metrics["loss"] is the objective's own loss without
regularisers (what evaluation reports) averaged over metrics["num_tokens"] examples, which the train
step uses to weight micro-batches and evaluation uses to aggregate exactly.
"""

from __future__ import annotations

from collections.abc import Callable

from llmos_jax.objectives.clm import make_clm_loss

_REGISTRY: dict[str, Callable] = {"clm": make_clm_loss}


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable:
    """The loss factory registered under `name`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]
