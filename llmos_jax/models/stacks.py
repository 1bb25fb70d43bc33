"""Pieces the Decoder, the encoder-decoder and the two-stream decoder share.

Each helper is called from inside a module's `@nn.compact` method, so the submodules it creates
("embed", "pos_embed", "layers", "lm_head", ...) belong to that module and the parameter names
are the same in every model: a two-stream model's weights are a decoder's weights.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax

from llmos_jax.models.layers import Einsum, ModelConfig, sinusoidal

REMAT_POLICIES = {
    "full": None,  # recompute everything in the backward pass
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def token_embedding(c: ModelConfig) -> nn.Embed:
    """The [V, D] table, named "embed" as in the Decoder (also the tied output projection)."""
    return nn.Embed(
        c.vocab_size,
        c.d_model,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(0.02), ("vocab", "embed")
        ),
        dtype=c.compute_dtype,
        param_dtype=c.weight_dtype,
        name="embed",
    )


def position_embedding(c: ModelConfig) -> Callable[[jax.Array], jax.Array] | None:
    """positions [B, T] -> [B, T, D] added to the token embeddings; None for RoPE (in attention)."""
    if c.position == "learned":
        return nn.Embed(
            c.max_len,
            c.d_model,
            embedding_init=nn.with_logical_partitioning(
                nn.initializers.normal(0.01), ("length", "embed")
            ),
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            name="pos_embed",
        )
    if c.position == "sinusoidal":
        return lambda positions: sinusoidal(positions, c.d_model).astype(c.compute_dtype)
    return None


def embed_inputs(c, embed, pos_embed, tokens, positions, deterministic: bool) -> jax.Array:
    """tokens, positions [B, T] -> dropout(token + position embedding) [B, T, D]."""
    x = embed(tokens)
    if pos_embed is not None:
        x = x + pos_embed(positions)
    return nn.Dropout(c.dropout_rate)(x, deterministic=deterministic)


def layer_stack(block: type[nn.Module], c: ModelConfig, deterministic: bool, name: str, nargs: int):
    """L blocks applied in turn: x, *args -> x, with the `nargs` args shared by every layer.

    `block(c, deterministic)(x, *args)` must return (x, anything). Scanned (params stacked on a
    leading "layers" axis under `name`) or unrolled into `name_0 ... name_{L-1}`, and remat'ed,
    exactly as the Decoder's stack.
    """
    if c.remat != "none":
        block = nn.remat(block, prevent_cse=not c.scan_layers, policy=REMAT_POLICIES[c.remat])
    if c.scan_layers:
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast,) * nargs,
            length=c.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )(c, deterministic, name=name)
        return lambda x, *args: stack(x, *args)[0]
    layers = [block(c, deterministic, name=f"{name}_{i}") for i in range(c.n_layers)]

    def run(x, *args):
        for layer in layers:
            x = layer(x, *args)[0]
        return x

    return run


def lm_logits(c: ModelConfig, embed: nn.Embed, x: jax.Array) -> jax.Array:
    """Final hidden states [B, T, D] -> logits [B, T, V]: tied to `embed` or an "lm_head"."""
    if c.tie_embeddings:
        logits = embed.attend(x)
    else:
        logits = Einsum(
            (c.d_model, c.vocab_size),
            ("embed", "vocab"),
            "BTD,DV->BTV",
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            impl=c.matmul_impl,
            name="lm_head",
        )(x)
    return nn.with_logical_constraint(
        logits, ("activation_batch", "activation_length", "activation_vocab")
    )
