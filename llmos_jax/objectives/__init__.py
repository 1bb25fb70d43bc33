"""Objectives: name -> factory(config, model) -> loss_fn(params, batch, rng, frozen).

Every loss_fn returns (loss, metrics). metrics["loss"] is the objective's own loss without
regularisers (what evaluation reports) averaged over metrics["num_tokens"] examples, which the train
step uses to weight micro-batches and evaluation uses to aggregate exactly.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from llmos_jax.objectives.clm import make_clm_loss
from llmos_jax.objectives.contrastive import make_clip_loss, make_siglip_loss
from llmos_jax.objectives.mlm import make_mlm_loss
from llmos_jax.objectives.plm import make_plm_loss
from llmos_jax.objectives.prefix_lm import make_prefix_lm_loss
from llmos_jax.objectives.simcse import make_simcse_loss
from llmos_jax.objectives.span import make_span_loss

_REGISTRY: dict[str, Callable] = {
    "clm": make_clm_loss,
    "clip": make_clip_loss,
    "siglip": make_siglip_loss,
    "simcse": make_simcse_loss,
}
_REGISTRY["mlm"] = make_mlm_loss  # BERT
_REGISTRY["plm"] = make_plm_loss  # XLNet
_REGISTRY["span"] = make_span_loss  # T5 span corruption
_REGISTRY["prefix_lm"] = make_prefix_lm_loss


def names() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def get(name: str) -> Callable:
    """The loss factory registered under `name`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def build(config, model, tokenizer=None) -> Callable:
    """loss_fn of config.objective.name for `model`; a factory with a `tokenizer` parameter
    (e.g. mlm's whole-word table, reserved-piece checks) gets the run's tokenizer."""
    factory = get(config.objective.name)
    if tokenizer is not None and "tokenizer" in inspect.signature(factory).parameters:
        return factory(config, model, tokenizer=tokenizer)
    return factory(config, model)
