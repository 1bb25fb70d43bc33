"""XLNet's two-stream self-attention on the Decoder's weights (Yang et al., 2019).

Two streams run through the same blocks:

* content stream h: token t attends to the content of every token up to and including itself in
  the factorisation order (`mask` [B, 1, T, T]); with the identity order it is the causal decoder.
* query stream g: the row predicting target t attends only to the content of tokens strictly
  before t in the order (`query_mask` [B, 1, T, T]), so it never sees the token it predicts.

The streams are concatenated along time, [h; g] of length 2T, and go through the unchanged `Block`
with a [2T, 2T] mask whose query-stream key columns are all False: both streams read keys and
values of the content stream only. Reusing `Block` as it is keeps the parameters those of a
`Decoder` one to one, at the price of attention scores over 2T keys of which T are masked
(about a tenth more FLOPs at T=512, d=768) and key/value projections of the query rows.

What the query stream starts from is the objective's choice (`query_tokens`, `query_positions`):
llmos_jax/objectives/plm.py feeds it the token just before the target in the order, placed at
the target's position minus one, which makes the identity order reduce exactly to causal LM.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models.layers import Block, ModelConfig, Norm
from llmos_jax.models.stacks import (
    embed_inputs,
    layer_stack,
    lm_logits,
    position_embedding,
    token_embedding,
)
from llmos_jax.models.transformer import Decoder


def two_stream_mask(mask: jax.Array, query_mask: jax.Array) -> jax.Array:
    """[B, 1, T, T] content and query masks -> [B, 1, 2T, 2T] over [h; g]: nothing reads g."""
    rows = jnp.concatenate([mask, query_mask], axis=2)  # [B, 1, 2T, T]
    return jnp.concatenate([rows, jnp.zeros_like(rows)], axis=3)


class TwoStreamDecoder(nn.Module):
    """Content stream (tokens, positions, mask) plus an optional query stream -> logits [B, T, V].

    With `query_tokens` None it is exactly a Decoder without cache (content-stream logits);
    otherwise it returns the query stream's logits, row t predicting the target of row t.
    """

    cfg: ModelConfig
    deterministic: bool = True

    # The content stream alone creates every parameter: a decoder's dummy inputs do.
    init_args = Decoder.init_args

    @nn.compact
    def __call__(
        self, tokens, positions, mask, query_tokens=None, query_positions=None, query_mask=None
    ):
        c = self.cfg
        embed, pos_embed = token_embedding(c), position_embedding(c)
        t = tokens.shape[1]
        if query_tokens is not None:
            tokens = jnp.concatenate([tokens, query_tokens], axis=1)  # [B, 2T]
            positions = jnp.concatenate([positions, query_positions], axis=1)
            mask = two_stream_mask(mask, query_mask)
        x = embed_inputs(c, embed, pos_embed, tokens, positions, self.deterministic)
        x = layer_stack(Block, c, self.deterministic, "layers", nargs=2)(x, positions, mask)
        if query_tokens is not None:
            x = x[:, t:]  # the head runs on the query stream only
        x = Norm(c.norm, c.norm_eps, c.compute_dtype, c.weight_dtype, name="final_norm")(x)
        x = nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
        return lm_logits(c, embed, x)
