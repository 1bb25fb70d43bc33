"""Masked language modelling (BERT; Devlin et al., 2019) on the packed-token rows.

The encoder is the Decoder under a bidirectional, segment-restricted mask (model.arch=decoder).
Each step, on device from the step's RNG: every maskable token (text: not padding, bos or eos) is
selected with probability `objective.mask_rate`; a selected token becomes
`objective.mask_token` with probability `mask_token_rate`, a uniformly random ordinary piece with
`random_token_rate`, and stays itself otherwise. The loss is the cross-entropy of the original
token at the selected positions only; `mlm/accuracy` is top-1 accuracy there.

Selection is a Bernoulli draw per token (or per word), so the rate holds in expectation, not
exactly per row (as in Hugging Face's collator; BERT's script rounds a count per sequence).

Whole-word masking (`objective.whole_word_masking`): a word starts at a piece beginning with "▁"
(SentencePiece's word-boundary mark), a special or reserved piece, or a segment start, and runs
to the next start. Words are selected whole; each of their pieces is then replaced 80/10/10 on
its own, as in BERT's whole-word release. The per-vocabulary "starts a word" table is read from
the tokenizer, which the train loop hands to this factory (`objectives.build`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from llmos_jax.config import ConfigError
from llmos_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID
from llmos_jax.models import attention_mask
from llmos_jax.objectives.common import masked_cross_entropy
from llmos_jax.objectives.options import option, ordinary_ids, require_arch, reserved_ids

WORD_MARK = "\u2581"  # "▁"


def word_start_table(tokenizer, vocab_size: int, first_ordinary: int) -> np.ndarray:
    """[V] bool: piece v begins a word. Specials, reserved and unused ids count as word starts;
    byte-fallback pieces ("<0xE2>") continue the word they are part of."""
    table = np.ones(vocab_size, bool)
    for v in range(first_ordinary, min(tokenizer.vocab_size, vocab_size)):
        table[v] = tokenizer.id_to_piece(v).startswith(WORD_MARK)
    return table


def mlm_corrupt(
    rng: jax.Array,
    tokens: jax.Array,
    segment_ids: jax.Array,
    maskable: jax.Array,
    starts_word: jax.Array | None,
    mask_id: int,
    rates: tuple[float, float, float],
    random_ids: tuple[int, int],
) -> tuple[jax.Array, jax.Array]:
    """(inputs [B, T], selected [B, T] bool) for tokens [B, T].

    rates = (mask_rate, mask_token_rate, random_token_rate); random replacements are drawn
    uniformly from [random_ids[0], random_ids[1]). With `starts_word` ([V] bool) the selection
    draw of each token is the draw of the first piece of its word.
    """
    mask_rate, p_mask, p_random = rates
    k_select, k_action, k_random = jax.random.split(rng, 3)
    u = jax.random.uniform(k_select, tokens.shape)
    if starts_word is not None:
        t = jnp.arange(tokens.shape[1])
        new_segment = jnp.concatenate(
            [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], 1
        )
        is_start = starts_word[tokens] | new_segment
        word_start = jax.lax.cummax(jnp.where(is_start, t, 0), axis=1)  # [B, T] index
        u = jnp.take_along_axis(u, word_start, axis=1)
    selected = maskable & (u < mask_rate)
    action = jax.random.uniform(k_action, tokens.shape)
    random_tokens = jax.random.randint(k_random, tokens.shape, *random_ids, dtype=tokens.dtype)
    inputs = jnp.where(
        action < p_mask, mask_id, jnp.where(action < p_mask + p_random, random_tokens, tokens)
    )
    return jnp.where(selected, inputs, tokens), selected


def make_mlm_loss(config, model, tokenizer=None):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for model.arch=decoder."""
    require_arch(config, "decoder")
    mask_rate = float(option(config, "mask_rate", lambda v: 0 < v < 1, "must be in (0, 1)"))
    p_mask = float(option(config, "mask_token_rate", lambda v: 0 <= v <= 1, "must be in [0, 1]"))
    p_random = float(
        option(
            config,
            "random_token_rate",
            lambda v: 0 <= v <= 1 - p_mask,
            f"must be in [0, 1 - mask_token_rate = {1 - p_mask:g}]",
        )
    )
    whole_word = bool(option(config, "whole_word_masking"))
    (mask_id,) = reserved_ids(config, [option(config, "mask_token")], tokenizer)
    random_ids = ordinary_ids(config, tokenizer)
    starts_word = None
    if whole_word:
        if tokenizer is None:
            raise ConfigError(
                "objective.whole_word_masking: needs the tokenizer's pieces; build the loss "
                "with objectives.build(config, model, tokenizer)"
            )
        starts_word = jnp.asarray(
            word_start_table(tokenizer, int(config.model.vocab_size), random_ids[0])
        )
    z_loss = float(config.objective.z_loss)
    rates = (mask_rate, p_mask, p_random)

    def loss_fn(params, batch, rng, frozen):
        del frozen  # no teacher or reference
        corrupt_rng, dropout_rng = jax.random.split(rng)
        tokens, seg = batch["tokens"], batch["segment_ids"]
        special = (tokens == PAD_ID) | (tokens == BOS_ID) | (tokens == EOS_ID)
        maskable = (batch["loss_mask"] > 0) & (seg > 0) & ~special
        inputs, selected = mlm_corrupt(
            corrupt_rng, tokens, seg, maskable, starts_word, mask_id, rates, random_ids
        )
        logits, _ = model.apply(
            {"params": params},
            inputs,
            batch["positions"],
            attention_mask(seg, causal=False),
            rngs={"dropout": dropout_rng},
        )
        loss, metrics = masked_cross_entropy(logits, tokens, selected, z_loss)
        metrics["mlm/accuracy"] = metrics.pop("accuracy")
        return loss, metrics

    return loss_fn
