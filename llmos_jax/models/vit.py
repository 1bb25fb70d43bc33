"""Vision Transformer (Dosovitskiy et al., 2021): images -> patch tokens -> non-causal blocks.

The blocks are `layers.Block` (the text model's pre-norm block) with a LayerNorm / GELU / bias
config, stacked with `nn.scan`; every attention sees every patch (no mask). There is no class
token: the dual encoder mean-pools the patch states (global average pooling, which matches a class
token in accuracy; Beyer et al., "Better plain ViT baselines", 2022).

Dimension letters: B batch, T patches, C pixels per patch (P*P*3), D width.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models.layers import Block, Einsum, ModelConfig, Norm
from llmos_jax.models.stacks import REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """The image tower's hyper-parameters (config section `model.vision`)."""

    image_size: int  # H = W, in pixels
    patch_size: int  # P: the image is cut into (H/P)^2 patches of P x P pixels
    d_model: int  # D
    n_layers: int  # L
    n_heads: int  # N
    d_ff: int  # F

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def block_config(self, text: ModelConfig) -> ModelConfig:
        """The ModelConfig `layers.Block` reads: ViT's LayerNorm / GELU / biases, the text model's
        dtypes, dropout and remat policy. `position="learned"` keeps RoPE out of the attention."""
        return ModelConfig(
            family="gpt2",
            vocab_size=1,  # no vocabulary: patches are embedded by a projection
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_heads,
            head_dim=self.d_model // self.n_heads,
            d_ff=self.d_ff,
            max_len=self.num_patches,
            position="learned",
            norm="layernorm",
            mlp="gelu",
            use_bias=True,
            tie_embeddings=False,
            norm_eps=1e-6,
            dropout_rate=text.dropout_rate,
            dtype=text.dtype,
            param_dtype=text.param_dtype,
            remat=text.remat,
            causal=False,
        )


def patchify(images: jax.Array, patch_size: int) -> jax.Array:
    """[B, H, W, 3] -> [B, T, C]: row-major patches, each flattened as (row, column, channel)."""
    b, h, w, ch = images.shape
    p = patch_size
    x = images.reshape(b, h // p, p, w // p, p, ch)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # [B, H/P, W/P, P, P, 3]
    return x.reshape(b, (h // p) * (w // p), p * p * ch)


class ViT(nn.Module):
    """images [B, H, W, 3] (uint8 in [0, 255] or float in [0, 1]) -> patch states [B, T, D]."""

    cfg: ModelConfig  # VisionConfig.block_config(...)
    patch_size: int
    deterministic: bool = True

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        c = self.cfg
        if jnp.issubdtype(images.dtype, jnp.integer):
            images = images.astype(jnp.float32) / 255.0
        x = patchify(images.astype(jnp.float32) * 2.0 - 1.0, self.patch_size)  # centred in [-1, 1]
        x = Einsum(
            (x.shape[-1], c.d_model),
            (None, "embed"),  # the pixel dimension is small and never sharded
            "BTC,CD->BTD",
            bias_shape=(c.d_model,),
            bias_axes=("embed",),
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            name="patch_embed",
        )(x)
        pos = self.param(
            "pos_embedding",
            nn.with_logical_partitioning(nn.initializers.normal(0.02), ("length", "embed")),
            (x.shape[1], c.d_model),
            c.weight_dtype,
        )
        x = x + pos.astype(x.dtype)[None]
        x = nn.Dropout(c.dropout_rate)(x, deterministic=self.deterministic)

        block = Block
        if c.remat != "none":
            block = nn.remat(block, prevent_cse=False, policy=REMAT_POLICIES[c.remat])
        stack = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=c.n_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        # Positions only matter to RoPE, which this config turns off; mask None = full attention.
        positions = jnp.zeros(x.shape[:2], jnp.int32)
        x, _ = stack(c, self.deterministic, name="layers")(x, positions, None)
        x = Norm(c.norm, c.norm_eps, c.compute_dtype, c.weight_dtype, name="final_norm")(x)
        return nn.with_logical_constraint(
            x, ("activation_batch", "activation_length", "activation_embed")
        )
