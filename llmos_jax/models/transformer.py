"""Decoder-only Transformer (GPT-2 and Llama families), with an optional KV cache.

Layers are stacked with `nn.scan` (params get a leading `layers` axis) so compile time does not grow
with depth; `scan_layers=False` unrolls them into `layers_0 ... layers_{L-1}` instead.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models.layers import Block, ModelConfig, Norm
from llmos_jax.models.stacks import (
    REMAT_POLICIES,
    embed_inputs,
    lm_logits,
    position_embedding,
    token_embedding,
)


def attention_mask(segment_ids: jax.Array, causal: bool = True) -> jax.Array:
    """[B, T] segment ids -> [B, 1, T, T] bool: same segment (and earlier or equal, if causal).

    Padding (segment 0) attends to padding, so no query row is empty (an empty row would NaN).
    """
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    if causal:
        t = segment_ids.shape[1]
        same = same & jnp.tril(jnp.ones((t, t), dtype=bool))[None]
    return same[:, None]


def cache_mask(kv_valid: jax.Array, cache_index: jax.Array, num_queries: int) -> jax.Array:
    """Mask for queries written at slots cache_index .. cache_index+T-1 of a cache of S slots.

    kv_valid: [B, S] bool, slots holding real tokens (left padding of a prompt is not valid).
    cache_index: a scalar, or [B] when each row writes at its own slot.
    Returns [B, 1, T, S]: query t may see valid slots s <= cache_index + t.
    """
    s = kv_valid.shape[1]
    q_slot = jnp.reshape(cache_index, (-1, 1)) + jnp.arange(num_queries)  # [1 or B, T]
    causal = jnp.arange(s) <= q_slot[..., None]  # [1 or B, T, S]
    return (causal & kv_valid[:, None, :])[:, None]


class Decoder(nn.Module):
    """tokens [B, T], positions [B, T], mask [B, 1, T, S] -> logits [B, T, V] (or hidden [B, T, D]).

    `cache`, when given, is a (k, v) pair of [L, B, S, K, H] arrays; the new one is returned.
    """

    cfg: ModelConfig
    deterministic: bool = True
    # With a cache: read it only, and return the new keys / values [L, B, T, K, H] in its place
    # (see layers.Attention); the serving engine writes them into its slots itself.
    append_kv: bool = False

    def init_args(self, seq_len: int) -> tuple:
        """Dummy (tokens, positions, mask) for `init`: shapes only matter, not values."""
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        positions = jnp.arange(seq_len, dtype=jnp.int32)[None]
        return tokens, positions, attention_mask(jnp.ones((1, seq_len), jnp.int32))

    def _block_stack(self):
        c = self.cfg
        block = Block
        if c.remat != "none":
            block = nn.remat(block, prevent_cse=not c.scan_layers, policy=REMAT_POLICIES[c.remat])
        return block

    @nn.compact
    def __call__(self, tokens, positions, mask, cache=None, cache_index=None, return_hidden=False):
        c = self.cfg
        embed = token_embedding(c)
        x = embed_inputs(c, embed, position_embedding(c), tokens, positions, self.deterministic)

        block = self._block_stack()
        if c.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                length=c.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            x, new_cache = stack(c, self.deterministic, self.append_kv, name="layers")(
                x, positions, mask, cache, cache_index
            )
        else:
            caches = []
            for i in range(c.n_layers):
                layer_cache = None if cache is None else (cache[0][i], cache[1][i])
                x, lc = block(c, self.deterministic, self.append_kv, name=f"layers_{i}")(
                    x, positions, mask, layer_cache, cache_index
                )
                caches.append(lc)
            new_cache = (
                None
                if cache is None
                else tuple(jnp.stack([lc[j] for lc in caches]) for j in range(2))
            )

        x = Norm(c.norm, c.norm_eps, c.compute_dtype, c.weight_dtype, name="final_norm")(x)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        if return_hidden:
            return x, new_cache
        logits = lm_logits(c, embed, x)
        return logits, new_cache


def init_cache(cfg: ModelConfig, batch: int, length: int, dtype=None):
    """Zeroed (k, v) caches of [L, B, S, K, H]."""
    shape = (cfg.n_layers, batch, length, cfg.n_kv_heads, cfg.head_dim)
    dt = dtype or cfg.compute_dtype
    return jnp.zeros(shape, dt), jnp.zeros(shape, dt)
