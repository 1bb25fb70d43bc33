"""Prefix LM: a decoder-only model, bidirectional over a prefix and causal after it.

A token of the prefix sees the whole prefix of its segment; a token after it sees the prefix and
the tokens up to itself. Two tasks (`objective.prefix_task`), both on the packed-token rows with
the prefix drawn on device from the step's RNG:

* "lm": each segment of n tokens is split at a uniformly random L in [1, n-1]; the model reads
  tokens [0, L) bidirectionally and predicts tokens L..n-1, each from the ones before it
  (T5's prefix-LM objective; the loss never scores a token the prefix could see).
* "span": T5's span corruption in one sequence, the decoder-only "prefix LM" architecture of T5's
  comparison: [encoder input (T); decoder input (2 * noise)] from objectives/corruption.py, the
  corrupted text as the prefix, the targets after it (positions continue from the end of their
  segment's prefix). Uses `objective.noise_density` and `objective.mean_span_length`.

Metrics: `prefix/accuracy` over the predicted tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.config import ConfigError, resolved_model
from llmos_jax.models import attention_mask
from llmos_jax.objectives.common import masked_cross_entropy
from llmos_jax.objectives.corruption import (
    corrupt_spans,
    decoder_length,
    sample_noise,
    span_setup,
)
from llmos_jax.objectives.options import option, require_arch

TASKS = ("lm", "span")


def prefix_lm_mask(segment_ids: jax.Array, is_prefix: jax.Array) -> jax.Array:
    """[B, 1, T, T]: same segment and (key not after query, or both in the prefix)."""
    causal = attention_mask(segment_ids, causal=True)
    bidirectional = attention_mask(segment_ids, causal=False)
    both = (is_prefix[:, :, None] & is_prefix[:, None, :])[:, None]
    return causal | (bidirectional & both)


def sample_prefix(rng: jax.Array, segment_ids: jax.Array) -> jax.Array:
    """[B, T] bool: the first L tokens of each segment of n, L uniform in [1, n-1] (1 if n=1)."""
    t = jnp.arange(segment_ids.shape[1])
    starts = jnp.concatenate(
        [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
    )
    first = jax.lax.cummax(jnp.where(starts, t, 0), axis=1)  # index of the segment's start
    n = jnp.sum(segment_ids[:, :, None] == segment_ids[:, None, :], axis=-1)
    u = jnp.take_along_axis(jax.random.uniform(rng, segment_ids.shape), first, axis=1)
    length = 1 + jnp.floor(u * jnp.maximum(n - 1, 0)).astype(jnp.int32)
    return (t - first) < length


def _lm_task(batch: dict, rng: jax.Array):
    """(tokens, positions, mask, targets, weights, logits slice) for the random-split task."""
    seg = batch["segment_ids"]
    is_prefix = sample_prefix(rng, seg)
    same_next = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
    weights = same_next & ~is_prefix[:, 1:] & (batch["loss_mask"][:, 1:] > 0)
    mask = prefix_lm_mask(seg, is_prefix)
    return batch["tokens"], batch["positions"], mask, batch["tokens"][:, 1:], weights, (0, -1)


def _span_task(batch: dict, rng: jax.Array, density: float, mean: float, sentinels):
    """The same six for span corruption laid out as [encoder input; decoder input]."""
    t = batch["tokens"].shape[1]
    dec_len = decoder_length(t, density, mean)
    noise = sample_noise(rng, batch, density, mean)
    s = corrupt_spans(batch["tokens"], batch["segment_ids"], noise, sentinels, dec_len)
    enc_seg, dec_seg = s["enc_segment_ids"], s["dec_segment_ids"]
    prefix_len = jnp.sum(dec_seg[:, :, None] == enc_seg[:, None, :], axis=-1)  # [B, D]
    tokens = jnp.concatenate([s["enc_tokens"], s["dec_inputs"]], axis=1)
    seg = jnp.concatenate([enc_seg, dec_seg], axis=1)
    positions = jnp.concatenate([s["enc_positions"], s["dec_positions"] + prefix_len], axis=1)
    is_prefix = jnp.arange(t + dec_len)[None] < t
    mask = prefix_lm_mask(seg, jnp.broadcast_to(is_prefix, seg.shape))
    return tokens, positions, mask, s["dec_targets"], dec_seg > 0, (t, None)


def make_prefix_lm_loss(config, model, tokenizer=None):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for model.arch=decoder."""
    require_arch(config, "decoder")
    task = option(config, "prefix_task", lambda v: v in TASKS, f"must be one of {TASKS}")
    z_loss = float(config.objective.z_loss)
    if task == "span":
        density, mean, sentinels = span_setup(config, tokenizer)
        longest = int(config.data.seq_len) + decoder_length(config.data.seq_len, density, mean)
        learned = resolved_model(config.model)["position"] == "learned"
        if learned and config.model.max_len < longest:
            raise ConfigError(
                f"model.max_len: learned positions of prefix_task='span' reach {longest} "
                f"(seq_len + 2 * noise tokens), max_len is {config.model.max_len}"
            )

    def loss_fn(params, batch, rng, frozen):
        del frozen  # no teacher or reference
        task_rng, dropout_rng = jax.random.split(rng)
        if task == "lm":
            tokens, positions, mask, targets, weights, cut = _lm_task(batch, task_rng)
        else:
            tokens, positions, mask, targets, weights, cut = _span_task(
                batch, task_rng, density, mean, sentinels
            )
        logits, _ = model.apply(
            {"params": params}, tokens, positions, mask, rngs={"dropout": dropout_rng}
        )
        loss, metrics = masked_cross_entropy(logits[:, cut[0] : cut[1]], targets, weights, z_loss)
        metrics["prefix/accuracy"] = metrics.pop("accuracy")
        return loss, metrics

    return loss_fn
