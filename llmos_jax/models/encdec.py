"""Encoder-decoder Transformer (T5's shape) built from the Decoder's blocks.

* Encoder: L `Block`s under a bidirectional, segment-restricted mask, then "encoder_norm".
* Decoder: L `DecoderBlock`s (causal self-attention, cross-attention to the encoder output, MLP,
  each pre-norm and residual), then "final_norm" and the LM head.
* One token embedding for both stacks and (if tied) the output, as in T5.
* Positions: RoPE in both stacks' self-attention (relative, like T5's bucketed position biases,
  and already what the codebase has; a learned or sinusoidal table if `model.position` says so).
  Cross-attention carries no position: its queries and keys index different sequences.
* `model.n_layers` is the depth of each stack (T5-base: 12 + 12); norms, MLP, biases and heads
  follow `model.family` as in the Decoder.

Masks come from the objective (llmos_jax/objectives/span.py builds them from segment ids, so
documents packed into one row never see each other, in either stack or across).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models.layers import Attention, Block, Einsum, Mlp, ModelConfig, Norm
from llmos_jax.models.stacks import (
    embed_inputs,
    layer_stack,
    lm_logits,
    position_embedding,
    token_embedding,
)
from llmos_jax.models.transformer import attention_mask

_LENGTH = ("activation_batch", "activation_length", "activation_embed")


class CrossAttention(nn.Module):
    """Queries from x [B, T, D], keys and values from the encoder output [B, S, D]."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, memory, mask, deterministic=True):
        c = self.cfg
        d, n, k, h = c.d_model, c.n_heads, c.n_kv_heads, c.head_dim
        kw = dict(dtype=c.compute_dtype, param_dtype=c.weight_dtype)

        def proj(heads, axis, eq, name):
            bias = dict(bias_shape=(heads, h), bias_axes=(axis, "head_dim")) if c.use_bias else {}
            return Einsum((d, heads, h), ("embed", axis, "head_dim"), eq, name=name, **bias, **kw)

        q = proj(n, "heads", "BTD,DNH->BTNH", "query")(x)
        key = proj(k, "kv_heads", "BSD,DKH->BSKH", "key")(memory)
        v = proj(k, "kv_heads", "BSD,DKH->BSKH", "value")(memory)
        impl = None if c.attention_impl == "auto" else c.attention_impl
        out = jax.nn.dot_product_attention(q, key, v, mask=mask, implementation=impl)
        out_bias = dict(bias_shape=(d,), bias_axes=("embed",)) if c.use_bias else {}
        out = Einsum(
            (n, h, d),
            ("heads", "head_dim", "embed"),
            "BTNH,NHD->BTD",
            name="out",
            std=0.02 / (2 * c.n_layers) ** 0.5,
            **out_bias,
            **kw,
        )(out)
        return nn.Dropout(c.dropout_rate)(out, deterministic=deterministic)


class DecoderBlock(nn.Module):
    """x + self_attn(norm(x)), x + cross_attn(norm(x), memory), x + mlp(norm(x))."""

    cfg: ModelConfig
    deterministic: bool = True

    @nn.compact
    def __call__(self, x, positions, mask, memory, cross_mask):
        c, det = self.cfg, self.deterministic
        norm = dict(kind=c.norm, eps=c.norm_eps, dtype=c.compute_dtype, param_dtype=c.weight_dtype)
        x = nn.with_logical_constraint(x, _LENGTH)
        h, _ = Attention(c, name="attn")(
            Norm(**norm, name="attn_norm")(x), positions, mask, None, None, det
        )
        x = x + h
        x = x + CrossAttention(c, name="cross_attn")(
            Norm(**norm, name="cross_attn_norm")(x), memory, cross_mask, det
        )
        x = x + Mlp(c, name="mlp")(Norm(**norm, name="mlp_norm")(x), det)
        return x, None


def encoder_stack(c: ModelConfig, det: bool, embed, pos_embed, tokens, positions, mask):
    """The encoder half, called inside a compact method so its parameters ("encoder",
    "encoder_norm") sit at that module's top level, as in EncoderDecoder."""
    x = embed_inputs(c, embed, pos_embed, tokens, positions, det)
    x = layer_stack(Block, c, det, "encoder", nargs=2)(x, positions, mask)
    norm = Norm(c.norm, c.norm_eps, c.compute_dtype, c.weight_dtype, name="encoder_norm")
    return nn.with_logical_constraint(norm(x), _LENGTH)


class Encoder(nn.Module):
    """The encoder of an EncoderDecoder alone: (tokens, positions, mask [B,1,S,S]) -> [B, S, D].

    Its parameters are a subset of the EncoderDecoder's ("embed", "pos_embed" if learned,
    "encoder", "encoder_norm"), so a span-corruption checkpoint's encoder runs without the
    decoder: sentence features for probes and embeddings.
    """

    cfg: ModelConfig
    deterministic: bool = True

    PARAM_KEYS = ("embed", "pos_embed", "encoder", "encoder_norm")

    @nn.compact
    def __call__(self, tokens, positions, mask):
        c = self.cfg
        embed, pos_embed = token_embedding(c), position_embedding(c)
        return encoder_stack(c, self.deterministic, embed, pos_embed, tokens, positions, mask)


class EncoderDecoder(nn.Module):
    """(encoder tokens, positions, mask [B,1,S,S]; decoder tokens, positions, mask [B,1,T,T];
    cross mask [B,1,T,S]) -> decoder logits [B, T, V]."""

    cfg: ModelConfig
    deterministic: bool = True

    def init_args(self, seq_len: int) -> tuple:
        """Dummy inputs for `init` (any lengths create the same parameters)."""
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        positions = jnp.arange(seq_len, dtype=jnp.int32)[None]
        ones = jnp.ones((1, seq_len), jnp.int32)
        cross = jnp.ones((1, 1, seq_len, seq_len), bool)
        return (
            tokens,
            positions,
            attention_mask(ones, causal=False),
            tokens,
            positions,
            attention_mask(ones),
            cross,
        )

    @nn.compact
    def __call__(
        self, enc_tokens, enc_positions, enc_mask, dec_tokens, dec_positions, dec_mask, cross_mask
    ):
        c, det = self.cfg, self.deterministic
        embed, pos_embed = token_embedding(c), position_embedding(c)
        norm = (c.norm, c.norm_eps, c.compute_dtype, c.weight_dtype)

        memory = encoder_stack(c, det, embed, pos_embed, enc_tokens, enc_positions, enc_mask)

        y = embed_inputs(c, embed, pos_embed, dec_tokens, dec_positions, det)
        y = layer_stack(DecoderBlock, c, det, "decoder", nargs=4)(
            y, dec_positions, dec_mask, memory, cross_mask
        )
        y = nn.with_logical_constraint(Norm(*norm, name="final_norm")(y), _LENGTH)
        return lm_logits(c, embed, y)
