"""T5's span corruption of packed rows, on device with static shapes (Raffel et al., 2020).

Each row of T tokens gets T5's noise mask (`random_spans_noise_mask`: exactly
round(T * noise_density) noise tokens in round(noise / mean_span_length) spans, lengths drawn
uniformly, the row starting with text and ending with noise). The row is one draw, and the
documents packed into it stay apart: a span that crosses a segment boundary becomes one span per
segment, and sentinels are numbered afresh in every segment. Per segment, as in T5:

    text     A B C D E F G           encoder   A <0> D E <1> G
    noise    . X X . . X .    ->     targets   <0> B C <1> F

Static shapes: the encoder keeps length T (text plus sentinels never exceed it); the decoder has
length 2 * round(T * noise_density), the most that targets can take (a sentinel per noise token
when boundaries split every span). Differences from T5: no closing sentinel or eos after the
last span (the next segment or padding ends the targets), and the decoder starts each segment
from bos rather than pad (pad means "no token" in our rows).

Used by objectives/span.py (encoder-decoder) and objectives/prefix_lm.py (decoder-only layout).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from llmos_jax.config import ConfigError
from llmos_jax.data.tokenizer import BOS_ID
from llmos_jax.objectives.options import option, reserved_ids


def sentinel_symbols(n: int) -> tuple[str, ...]:
    """T5's sentinel pieces, to reserve in data.tokenizer.user_defined_symbols."""
    return tuple(f"<extra_id_{i}>" for i in range(n))


def span_counts(length: int, noise_density: float, mean_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) per row of `length`, as T5 computes them."""
    num_noise = min(max(round(length * noise_density), 1), length - 1)
    return num_noise, max(round(num_noise / mean_span_length), 1)


def decoder_length(length: int, noise_density: float, mean_span_length: float) -> int:
    """Static decoder length for rows of `length`: the most targets can take."""
    return 2 * span_counts(length, noise_density, mean_span_length)[0]


def _random_segmentation(rng, rows: int, num_items: int, num_segments: int) -> jax.Array:
    """[rows, num_segments] lengths >= 1 summing to num_items, uniform over such compositions:
    the cut points are a uniformly random (num_segments - 1)-subset of the num_items - 1 gaps."""
    u = jax.random.uniform(rng, (rows, num_items - 1))
    # Ranks of random draws: exactly num_segments - 1 cuts, even if two draws tie.
    cut = jnp.argsort(jnp.argsort(u, axis=1), axis=1) < num_segments - 1
    segment = jnp.cumsum(jnp.pad(cut, ((0, 0), (1, 0))), axis=1)  # [rows, num_items]
    row = jnp.arange(rows)[:, None]
    return jnp.zeros((rows, num_segments), jnp.int32).at[row, segment].add(1)


def random_spans_noise_mask(
    rng, rows: int, length: int, noise_density: float, mean_span_length: float
) -> jax.Array:
    """[rows, length] bool: T5's noise mask (text span, noise span, ..., text span, noise span).

    Batched rather than vmapped over per-row keys: XLA compiles it several times faster.
    """
    num_noise, num_spans = span_counts(length, noise_density, mean_span_length)
    k_noise, k_text = jax.random.split(rng)
    noise_lengths = _random_segmentation(k_noise, rows, num_noise, num_spans)
    text_lengths = _random_segmentation(k_text, rows, length - num_noise, num_spans)
    interleaved = jnp.stack([text_lengths, noise_lengths], axis=2).reshape(rows, -1)
    starts = jnp.cumsum(interleaved, axis=1)[:, :-1]
    row = jnp.arange(rows)[:, None]
    span_number = jnp.cumsum(jnp.zeros((rows, length), jnp.int32).at[row, starts].add(1), axis=1)
    return span_number % 2 == 1


def _segment_starts(seg: jax.Array) -> jax.Array:
    """[B, T] bool: index 0 or a change of segment id."""
    return jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)


def segment_positions(seg: jax.Array) -> jax.Array:
    """[B, T] positions restarting at every segment start (0 in padding)."""
    t = jnp.arange(seg.shape[1])
    first = jax.lax.cummax(jnp.where(_segment_starts(seg), t, 0), axis=1)
    return jnp.where(seg > 0, t - first, 0).astype(jnp.int32)


def _compact(values: jax.Array, index: jax.Array, length: int) -> jax.Array:
    """out[b, index[b, t]] = values[b, t] into [B, length] zeros; index >= length is dropped."""
    rows = jnp.arange(values.shape[0])[:, None]
    return (
        jnp.zeros((values.shape[0], length), values.dtype).at[rows, index].set(values, mode="drop")
    )


def corrupt_spans(tokens, seg, noise, sentinel_ids, dec_len: int) -> dict[str, jax.Array]:
    """Encoder inputs [B, T] and decoder targets [B, dec_len] of rows [B, T] under `noise`
    [B, T] (on real tokens only). Returns enc_/dec_ tokens, segment_ids, positions, and
    dec_inputs (the targets shifted right within each segment, bos first)."""
    t = tokens.shape[1]
    index = jnp.arange(t)
    after_noise = jnp.pad(noise[:, :-1], ((0, 0), (1, 0)))
    starts = _segment_starts(seg)
    span_start = noise & (~after_noise | starts)
    # Sentinel number: span starts earlier in the same segment.
    count = jnp.cumsum(span_start, axis=1)
    first = jax.lax.cummax(jnp.where(starts, index, 0), axis=1)
    before_segment = jnp.take_along_axis(count - span_start, first, axis=1)
    number = jnp.clip(count - 1 - before_segment, 0, len(sentinel_ids) - 1)
    sentinel = jnp.asarray(sentinel_ids, tokens.dtype)[number]

    keep = ~noise | span_start  # text stays, a span's first token becomes its sentinel
    enc_index = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, t)
    enc_tokens = _compact(jnp.where(span_start, sentinel, tokens), enc_index, t)
    enc_seg = _compact(seg, enc_index, t)

    emit = noise.astype(jnp.int32) + span_start  # a span's first token brings its sentinel
    at = jnp.cumsum(emit, axis=1) - emit
    d = dec_len
    sentinel_at = jnp.where(span_start, at, d)
    token_at = jnp.where(noise, at + span_start, d)
    dec_targets = _compact(sentinel, sentinel_at, d) + _compact(tokens, token_at, d)
    dec_seg = _compact(seg, sentinel_at, d) + _compact(seg, token_at, d)
    shifted = jnp.pad(dec_targets[:, :-1], ((0, 0), (1, 0)))
    dec_inputs = jnp.where(_segment_starts(dec_seg), BOS_ID, shifted).astype(tokens.dtype)
    return {
        "enc_tokens": enc_tokens,
        "enc_segment_ids": enc_seg,
        "enc_positions": segment_positions(enc_seg),
        "dec_inputs": dec_inputs,
        "dec_targets": dec_targets,
        "dec_segment_ids": dec_seg,
        "dec_positions": segment_positions(dec_seg),
    }


def span_setup(config, tokenizer=None) -> tuple[float, float, list[int]]:
    """(noise_density, mean_span_length, sentinel ids), validated for rows of data.seq_len."""
    density = float(option(config, "noise_density", lambda v: 0 < v < 1, "must be in (0, 1)"))
    mean = float(option(config, "mean_span_length", lambda v: v >= 1, "must be >= 1"))
    t = int(config.data.seq_len)
    num_noise, num_spans = span_counts(t, density, mean)
    if t - num_noise < num_spans:
        raise ConfigError(
            f"objective.noise_density: {density} leaves {t - num_noise} text tokens in a row of "
            f"{t}, fewer than the {num_spans} spans between which text must lie"
        )
    return density, mean, reserved_ids(config, sentinel_symbols(num_spans), tokenizer)


def sample_noise(rng, batch: dict, density: float, mean: float) -> jax.Array:
    """[B, T] bool: a T5 noise mask per row, restricted to real, scored tokens."""
    noise = random_spans_noise_mask(rng, *batch["tokens"].shape, density, mean)
    return noise & (batch["segment_ids"] > 0) & (batch["loss_mask"] > 0)
