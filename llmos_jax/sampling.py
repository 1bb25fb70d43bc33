"""Generation with a KV cache: one jitted prefill, then a jitted decode loop (lax.while_loop).

Prompts of different lengths are left-padded to a common length P, so every row writes the same
cache slot at each step; each row's own positions (0, 1, ... from its first real token) feed the
position embeddings, and the padding slots are masked out of attention.
Sampling parameters are per row, so one batch may mix greedy and sampled requests.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from llmos_jax.models import cache_mask, init_cache


@dataclasses.dataclass(frozen=True)
class SampleOptions:
    max_new_tokens: int = 64
    temperature: float = 0.8  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off


def filter_logits(logits, temperature, top_k, top_p):
    """Temperature-scaled logits [B, V] with the tokens outside top-k / top-p set to -inf.

    temperature, top_p float [B]; top_k int [B] (0 = off).
    """
    logits = logits.astype(jnp.float32)
    scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
    sorted_desc = jnp.sort(scaled, axis=-1)[:, ::-1]
    v = logits.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    kth = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
    # Nucleus: keep the smallest prefix of the sorted distribution whose mass reaches top_p
    # (a token is kept if the mass strictly before it is < top_p, so the top token always is).
    probs = jax.nn.softmax(sorted_desc, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs
    keep = mass_before < top_p[:, None]
    last_kept = jnp.sum(keep, axis=-1) - 1
    pth = jnp.take_along_axis(sorted_desc, last_kept[:, None], axis=-1)
    threshold = jnp.maximum(kth, pth)
    return jnp.where(scaled >= threshold, scaled, -jnp.inf)


def sample_logits(logits, rng, temperature, top_k, top_p):
    """One token per row. logits [B, V]; temperature, top_p float [B]; top_k int [B] (0 = off).

    Top-k and top-p (nucleus) filtering are applied to the temperature-scaled distribution; rows
    with temperature 0 take the argmax.
    """
    greedy = jnp.argmax(logits, axis=-1)
    filtered = filter_logits(logits, temperature, top_k, top_p)
    sampled = jax.random.categorical(rng, filtered, axis=-1)
    return jnp.where(temperature > 0, sampled, greedy).astype(jnp.int32)


# Objectives whose model can continue a prompt token by token: the value says whether the prompt
# is read bidirectionally (a prefix LM's prefix) rather than causally.
GENERATIVE_OBJECTIVES = {"clm": False, "prefix_lm": True}


def can_generate(config) -> bool:
    return config.objective.name in GENERATIVE_OBJECTIVES and config.model.arch == "decoder"


def generation_mode(config, command: str = "generate") -> bool:
    """Whether `config`'s model reads a prompt bidirectionally; a ConfigError naming the
    objective when the model cannot generate at all (a bidirectional encoder such as MLM's, the
    encoder-decoder of span corruption, XLNet's two streams, contrastive encoders)."""
    from llmos_jax.config import ConfigError

    name = config.objective.name
    if not can_generate(config):
        raise ConfigError(
            f"objective.name={name!r} (model.arch={config.model.arch!r}): `llmos {command}` "
            f"continues text with a decoder trained on one of "
            f"{sorted(GENERATIVE_OBJECTIVES)}; this run's model does not generate text"
        )
    return GENERATIVE_OBJECTIVES[name]


def left_pad(prompts: list[list[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token lists -> (tokens [B, P], valid [B, P]) right-aligned."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (a BOS token will do)")
    p_len = max(len(p) for p in prompts)
    tokens = np.full((len(prompts), p_len), pad_id, np.int32)
    valid = np.zeros((len(prompts), p_len), bool)
    for i, p in enumerate(prompts):
        tokens[i, p_len - len(p) :] = p
        valid[i, p_len - len(p) :] = True
    return tokens, valid


@functools.partial(
    jax.jit,
    static_argnames=("model", "max_new_tokens", "return_logits", "bidirectional_prompt"),
)
def _generate(
    model,
    params,
    tokens,
    valid,
    rng,
    temperature,
    top_k,
    top_p,
    eos_id,
    *,
    max_new_tokens: int,
    return_logits: bool = False,
    bidirectional_prompt: bool = False,
):
    b, p_len = tokens.shape
    s = p_len + max_new_tokens
    cache = init_cache(model.cfg, b, s)
    kv_valid = jnp.concatenate([valid, jnp.ones((b, max_new_tokens), bool)], axis=1)
    positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    if bidirectional_prompt:  # each prompt position sees every valid prompt token
        prompt_mask = jnp.broadcast_to(cache_mask(kv_valid, p_len - 1, 1), (b, 1, p_len, s))
    else:
        prompt_mask = cache_mask(kv_valid, 0, p_len)
    logits, cache = model.apply({"params": params}, tokens, positions, prompt_mask, cache, 0)
    lengths = jnp.sum(valid, axis=1).astype(jnp.int32)
    out = jnp.zeros((b, max_new_tokens), jnp.int32)
    step_logits = jnp.zeros(
        (b, max_new_tokens, logits.shape[-1]) if return_logits else (0,), jnp.float32
    )
    done = jnp.zeros((b,), bool)

    def cond(carry):
        t, _, _, done, _, _, _ = carry
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        t, last, cache, done, out, step_logits, rng = carry
        rng, sub = jax.random.split(rng)
        tok = sample_logits(last, sub, temperature, top_k, top_p)
        tok = jnp.where(done, eos_id, tok)
        out = out.at[:, t].set(tok)
        if return_logits:
            step_logits = step_logits.at[:, t].set(last.astype(jnp.float32))
        done = done | (tok == eos_id)
        pos = (lengths + t)[:, None]
        logits, cache = model.apply(
            {"params": params},
            tok[:, None],
            pos,
            cache_mask(kv_valid, p_len + t, 1),
            cache,
            p_len + t,
        )
        return t + 1, logits[:, -1], cache, done, out, step_logits, rng

    carry = (jnp.int32(0), logits[:, -1], cache, done, out, step_logits, rng)
    t, _, _, _, out, step_logits, _ = jax.lax.while_loop(cond, body, carry)
    return out, t, step_logits


def generate(
    model,
    params,
    prompts: list[list[int]],
    *,
    eos_id: int,
    rng,
    options: SampleOptions | list[SampleOptions] = SampleOptions(),
    pad_id: int = 0,
    return_logits: bool = False,
    bidirectional_prompt: bool = False,
):
    """Samples continuations of a batch of prompts (token-id lists).

    Returns a list of generated id lists, each cut before the first EOS; with return_logits, also
    the [B, steps, V] logits each sampled token was drawn from (the test of the cache compares them
    with a full forward pass). `bidirectional_prompt`: every prompt token sees the whole prompt,
    as a prefix LM reads its prefix (see `generation_mode`); the new tokens stay causal.
    """
    opts = options if isinstance(options, list) else [options] * len(prompts)
    max_new = max(o.max_new_tokens for o in opts)
    limit = model.cfg.max_len
    longest = max(len(p) for p in prompts)
    if longest + max_new > limit and model.cfg.position == "learned":
        raise ValueError(
            f"prompt ({longest} tokens) + max_new_tokens ({max_new}) exceeds the "
            f"model's max_len of {limit}"
        )
    tokens, valid = left_pad(prompts, pad_id)
    out, steps, logits = _generate(
        model,
        params,
        jnp.asarray(tokens),
        jnp.asarray(valid),
        rng,
        jnp.asarray([o.temperature for o in opts], jnp.float32),
        jnp.asarray([o.top_k for o in opts], jnp.int32),
        jnp.asarray([o.top_p for o in opts], jnp.float32),
        jnp.int32(eos_id),
        max_new_tokens=max_new,
        return_logits=return_logits,
        bidirectional_prompt=bidirectional_prompt,
    )
    out = np.asarray(out)[:, : int(steps)]
    results = []
    for row, o in zip(out, opts):
        row = list(row[: o.max_new_tokens])
        if eos_id in row:
            row = row[: row.index(eos_id)]
        results.append([int(x) for x in row])
    if return_logits:
        return results, np.asarray(logits)[:, : int(steps)]
    return results
