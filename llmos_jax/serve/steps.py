"""The serving engine's two jitted functions over a slot cache (k, v: [L, S, M, K, H]).

S slots each hold one independent sequence; slot s has its own length, so every row reads and
writes the cache at its own index (the model's vector `cache_index`).

The model runs in its append mode (`Decoder(append_kv=True)`): it reads the cache, never writes
it, and returns each layer's new keys and values, which are scattered into the slot cache in
place (it is donated). Writing through the model instead copied the active part of the cache
several times per step (slice out, per-layer update, stacked scan outputs, write back), which on
a CPU cost more than the model itself.

* `prefill`: R new prompts [R, P] (right-padded to a bucketed length) run through the model with
  nothing cached; their keys and values go to positions [0, P) of the slots named by `slots` [R].
  Only the hidden states are computed unless prompt logprobs are wanted: the vocabulary
  projection is most of a small model.
* `decode`: one token for each of the first S' slots, with its logprobs: attends over the first
  `kv_len` cache positions (bucketed bounds on the busy slots and the longest sequence, so a
  few short sequences don't pay for S x max_len), writes the new keys and values at each slot's
  length, samples with per-slot temperature / top-k / top-p from a per-slot key
  fold_in(fold_in(PRNGKey(seed), choice), step): a request's samples depend on its seed only,
  not on which slot it got or what else is in the batch.

Logprobs are those of the model's own distribution (log-softmax of the raw logits, before
temperature and filtering), as OpenAI's API and vLLM report them; the top MAX_TOP_LOGPROBS
alternatives come back with them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llmos_jax.models import cache_mask
from llmos_jax.sampling import filter_logits

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for top_logprobs


def _head(model, params, hidden: jax.Array) -> jax.Array:
    """The Decoder's vocabulary projection of final-norm hidden states [..., D] -> [..., V]."""
    c = model.cfg
    if c.tie_embeddings:
        w = params["embed"]["embedding"].astype(c.compute_dtype)  # [V, D]
        return jnp.einsum("...D,VD->...V", hidden.astype(c.compute_dtype), w)
    w = params["lm_head"]["kernel"].astype(c.compute_dtype)  # [D, V]
    return jnp.einsum("...D,DV->...V", hidden.astype(c.compute_dtype), w)


def _logprobs(logits: jax.Array, targets: jax.Array):
    """(logprob of targets [...], top ids [..., k], top logprobs [..., k]) of logits [..., V]."""
    lp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    chosen = jnp.take_along_axis(lp, targets[..., None], axis=-1)[..., 0]
    top_lp, top_ids = jax.lax.top_k(lp, min(MAX_TOP_LOGPROBS, lp.shape[-1]))
    return chosen, top_ids.astype(jnp.int32), top_lp


def _check_append(model) -> None:
    if not getattr(model, "append_kv", False):
        raise ValueError("the serving steps need model.clone(append_kv=True) (see steps.py)")


@functools.partial(jax.jit, static_argnames=("model", "with_logprobs"), donate_argnums=(2,))
def prefill(model, params, cache, tokens, targets, slots, *, with_logprobs: bool):
    """Writes prompts tokens [R, P] into the slots [R] of cache; returns (cache, logprob info).

    A slot index out of range (>= S) marks a padding row: its keys and values are dropped.
    targets [R, P]: the token after each position (for prompt logprobs; ignored otherwise).
    """
    _check_append(model)
    r, p = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (r, p))
    nothing_cached = jnp.zeros((r, 1, p, 0), bool)  # the prompt attends (causally) to itself only
    hidden, new = model.apply(
        {"params": params}, tokens, positions, nothing_cached, cache, 0, return_hidden=True
    )
    # [L, S, M, K, H].at[:, slots, :P] <- [L, R, P, K, H]; padding rows name slot S: dropped.
    cache = tuple(c.at[:, slots, :p].set(n, mode="drop") for c, n in zip(cache, new))
    info = _logprobs(_head(model, params, hidden), targets) if with_logprobs else None
    return cache, info


def sample(logits, keys, temperature, top_k, top_p, filtering: bool = True):
    """One token per row of logits [S, V], with `sample_logits`' semantics, faster on CPU.

    Each row draws one uniform from its own key and inverts the CDF of its (filtered,
    temperature-scaled) distribution, instead of V Gumbel draws; and the sort that top-k /
    top-p need runs only with `filtering` (static: set when some row asks for them; the kept
    values are the same either way, so a row's token does not depend on its neighbours'
    settings). temperature 0 = argmax.
    """
    logits = logits.astype(jnp.float32)
    if filtering:
        scaled = filter_logits(logits, temperature, top_k, top_p)
    else:
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    cdf = jnp.cumsum(jax.nn.softmax(scaled, axis=-1), axis=-1)
    u = jax.vmap(jax.random.uniform)(keys)  # [0, 1)
    target = (1.0 - u) * cdf[:, -1]  # (0, total]: never lands on a zero-probability token
    sampled = jnp.minimum(jnp.sum(cdf < target[:, None], axis=-1), logits.shape[-1] - 1)
    return jnp.where(temperature > 0, sampled, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=("model", "kv_len", "filtering"), donate_argnums=(2,))
def decode(
    model,
    params,
    cache,
    tokens,
    lengths,
    seeds,
    choices,
    steps,
    temperature,
    top_k,
    top_p,
    *,
    kv_len: int,
    filtering: bool,
):
    """One decode step over the first S' slots (S' = len(tokens); the engine fills low slots
    first and passes a bucketed S', so a lone stream does not pay for S idle rows).

    tokens [S']: each slot's last token, fed at position lengths [S] (also its cache write index);
    seeds, choices, steps [S] pick each slot's sampling key; `filtering`: some slot samples with
    top-k or top-p. Returns (cache, next tokens [S],
    logprob info). Idle slots compute garbage at their index 0, never read. The logprobs are
    always computed: next to a decode step they cost little, and one compiled variant per
    kv_len instead of two halves the compile time.
    """
    _check_append(model)
    s = tokens.shape[0]  # the first s slots: the others are idle
    # Cached positions < length; the token fed now (at `length`) sees itself as a new key.
    mask = cache_mask(jnp.ones((s, kv_len), bool), lengths - 1, 1)
    logits, new = model.apply(
        {"params": params}, tokens[:, None], lengths[:, None], mask, cache, lengths
    )
    rows = jnp.arange(s)
    # [L, S, M, K, H].at[:, row, lengths[row]] <- [L, S', K, H]: in place, the cache is donated.
    cache = tuple(c.at[:, rows, lengths].set(n[:, :, 0]) for c, n in zip(cache, new))
    logits = logits[:, 0]
    keys = jax.vmap(
        lambda seed, choice, step: jax.random.fold_in(
            jax.random.fold_in(jax.random.PRNGKey(seed), choice), step
        )
    )(seeds, choices, steps)
    next_tokens = sample(logits, keys, temperature, top_k, top_p, filtering)
    return cache, next_tokens, _logprobs(logits, next_tokens)
