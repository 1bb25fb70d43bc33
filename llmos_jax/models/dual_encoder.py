"""Two towers for image-text contrastive learning (CLIP, SigLIP): a ViT and the text Transformer.

Each tower pools its states (mean over patches; mean over the caption's tokens under a
bidirectional mask), projects them to a shared width E and L2-normalises. The learnable
temperature and bias live here as scalar params `logit_scale` (log of the inverse temperature) and
`logit_bias` (used by SigLIP only); the objective turns similarities into logits with them.

Config: the text tower is `model.*` (as for the decoder); the image tower is `model.vision`; plus
`model.embed_dim` (E), `model.logit_scale_init` and `model.logit_bias_init`.

Dimension letters: B batch, T length, M segments per row, D width, E embedding width.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from llmos_jax.models.layers import Einsum, ModelConfig
from llmos_jax.models.transformer import Decoder, attention_mask
from llmos_jax.models.vit import VisionConfig, ViT


def segment_mean(
    hidden: jax.Array, segment_ids: jax.Array, num_segments: int
) -> tuple[jax.Array, jax.Array]:
    """Mean of the states of each segment: [B, T, D], [B, T] -> ([B, M, D] f32, counts [B, M]).

    Segment m+1 of a row lands in slot m; segments past M and padding (id 0) are dropped, and an
    empty slot pools to zeros. A one-hot matmul rather than a segment_sum keeps the batch axis
    sharded and the shapes static.
    """
    slots = jnp.arange(1, num_segments + 1)
    member = (segment_ids[:, :, None] == slots).astype(jnp.float32)  # [B, T, M]
    counts = member.sum(axis=1)
    sums = jnp.einsum("BTM,BTD->BMD", member, hidden.astype(jnp.float32))
    return sums / jnp.maximum(counts, 1.0)[..., None], counts


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """x / |x| over the last axis; a zero vector (an empty slot) stays zero instead of NaN."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


class DualOutput(NamedTuple):
    image: jax.Array  # [B, E], unit norm
    text: jax.Array  # [B, E], unit norm (zeros for an all-padding caption)
    logit_scale: jax.Array  # [] log of the inverse temperature
    logit_bias: jax.Array  # [] SigLIP's bias


def vision_config(config) -> VisionConfig:
    """`model.vision` as a VisionConfig; a ConfigError names the first invalid field."""
    from llmos_jax.config import ConfigError

    if "vision" not in config.model:
        raise ConfigError("model.vision: model.arch='dual_encoder' needs a model.vision section")
    v = config.model.vision
    fields = ("image_size", "patch_size", "d_model", "n_layers", "n_heads", "d_ff")
    for f in fields:
        if f not in v or int(v[f]) <= 0:
            raise ConfigError(f"model.vision.{f}: must be a positive int, got {v.get(f)}")
    if v.image_size % v.patch_size:
        raise ConfigError(
            f"model.vision.patch_size: {v.patch_size} does not divide "
            f"model.vision.image_size={v.image_size}"
        )
    if v.d_model % v.n_heads:
        raise ConfigError(
            f"model.vision.n_heads: {v.n_heads} does not divide model.vision.d_model={v.d_model}"
        )
    # Param axes map onto the mesh as the text tower's do (heads, mlp -> tensor; embed -> fsdp).
    for f, axis in (("n_heads", "tensor"), ("d_ff", "tensor"), ("d_model", "fsdp")):
        size = int(config.mesh[axis])  # -1 (filled from the device count) is not known here
        if size > 0 and int(v[f]) % size:
            raise ConfigError(f"model.vision.{f}: {v[f]} is not divisible by mesh.{axis}={size}")
    for f in ("embed_dim", "logit_scale_init", "logit_bias_init"):
        if f not in config.model:
            raise ConfigError(f"model.{f}: model.arch='dual_encoder' needs it")
    if int(config.model.embed_dim) <= 0:
        raise ConfigError(f"model.embed_dim: must be positive, got {config.model.embed_dim}")
    return VisionConfig(**{f: int(v[f]) for f in fields})


class DualEncoder(nn.Module):
    """(images [B, H, W, 3], tokens [B, T], positions [B, T], segment_ids [B, T]) -> DualOutput.

    A caption is the row's non-padding tokens (segment id > 0), read bidirectionally.
    """

    cfg: ModelConfig  # the text tower
    deterministic: bool = True
    # The rest comes from the config (from_config); the defaults are configs/clip/tiny.py's.
    vision: VisionConfig = VisionConfig(32, 8, 64, 2, 4, 128)
    embed_dim: int = 64  # E
    logit_scale_init: float = 2.6593  # log(1 / 0.07), CLIP's initial temperature
    logit_bias_init: float = 0.0

    @classmethod
    def from_config(cls, config, cfg: ModelConfig, deterministic: bool = True) -> DualEncoder:
        m = config.model
        return cls(
            cfg,
            deterministic=deterministic,
            vision=vision_config(config),
            embed_dim=int(m.embed_dim),
            logit_scale_init=float(m.logit_scale_init),
            logit_bias_init=float(m.logit_bias_init),
        )

    def init_args(self, seq_len: int) -> tuple:
        """Dummy (images, tokens, positions, segment_ids) for `init`: only shapes matter."""
        s = self.vision.image_size
        images = jnp.zeros((1, s, s, 3), jnp.uint8)
        tokens = jnp.zeros((1, seq_len), jnp.int32)
        positions = jnp.arange(seq_len, dtype=jnp.int32)[None]
        return images, tokens, positions, jnp.ones((1, seq_len), jnp.int32)

    def _project(self, x: jax.Array, name: str) -> jax.Array:
        c = self.cfg
        return Einsum(
            (x.shape[-1], self.embed_dim),
            ("embed", None),
            "BD,DE->BE",
            dtype=c.compute_dtype,
            param_dtype=c.weight_dtype,
            name=name,
        )(x)

    @nn.compact
    def __call__(self, images, tokens, positions, segment_ids) -> DualOutput:
        v = self.vision
        patches = ViT(v.block_config(self.cfg), v.patch_size, self.deterministic, name="vision")(
            images
        )  # [B, T', D']
        image = self._project(jnp.mean(patches.astype(jnp.float32), axis=1), "image_proj")

        caption = (segment_ids > 0).astype(jnp.int32)  # one caption per row
        hidden, _ = Decoder(self.cfg, self.deterministic, name="text")(
            tokens, positions, attention_mask(caption, causal=False), return_hidden=True
        )
        pooled, _ = segment_mean(hidden, caption, 1)  # [B, 1, D]
        text = self._project(pooled[:, 0], "text_proj")

        def scalar(name: str, value: float) -> jax.Array:
            init = nn.initializers.constant(value)
            return self.param(name, nn.with_logical_partitioning(init, ()), (), jnp.float32)

        return DualOutput(
            image=l2_normalize(image.astype(jnp.float32)),
            text=l2_normalize(text.astype(jnp.float32)),
            logit_scale=scalar("logit_scale", self.logit_scale_init),
            logit_bias=scalar("logit_bias", self.logit_bias_init),
        )
