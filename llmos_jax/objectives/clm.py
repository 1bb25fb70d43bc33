"""Causal language modelling: predict each token from the ones before it in its document."""

from __future__ import annotations

from llmos_jax.models import attention_mask
from llmos_jax.objectives.common import masked_cross_entropy, next_token_targets


def make_clm_loss(config, model):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for the train step."""
    z_loss = float(config.objective.z_loss)

    def loss_fn(params, batch, rng, frozen):
        del frozen  # a causal LM has no teacher or reference
        mask = attention_mask(batch["segment_ids"], causal=True)
        logits, _ = model.apply(
            {"params": params}, batch["tokens"], batch["positions"], mask, rngs={"dropout": rng}
        )
        targets, weights = next_token_targets(batch)
        return masked_cross_entropy(logits[:, :-1], targets, weights, z_loss)

    return loss_fn
