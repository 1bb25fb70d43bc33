"""Image-text contrastive objectives: CLIP (softmax InfoNCE) and SigLIP (pairwise sigmoid).

Pair i of the batch is (image i, caption i); every other pair's caption and image are negatives.
The similarities are one [B, C] matrix over the *global* batch (B images, C captions, C = B):
under jit the embeddings are global arrays, so the partitioner gathers the negatives from every
data shard and the loss on a (data, fsdp, tensor) mesh equals the single-device loss.

Rows without a caption (the zero rows padding the last eval batch) are neither queries nor
negatives; metrics["num_tokens"] is the number of valid pairs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NEG = -1e9  # the logit of an excluded pair: finite, so an all-padding batch gives 0, not NaN
MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP caps the inverse temperature at 100


def info_nce_rows(logits: jax.Array, valid: jax.Array) -> jax.Array:
    """-log softmax(logits[i])[i] over the valid columns: [P, Q], [Q] bool -> [P] float32."""
    logits = jnp.where(valid[None, :], logits.astype(jnp.float32), NEG)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.diagonal(logits)


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    w = valid.astype(jnp.float32)
    return jnp.sum(values * w) / jnp.maximum(jnp.sum(w), 1.0)


def clip_loss(image: jax.Array, text: jax.Array, valid: jax.Array, logit_scale: jax.Array):
    """Symmetric InfoNCE of Radford et al. (2021): (image->text + text->image) / 2.

    image, text [B, E] unit norm; valid [B]; logit_scale: log of the inverse temperature
    (clipped at log 100). Returns (mean loss over valid pairs, logits [B, C]).
    """
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = scale * jnp.einsum("BE,CE->BC", image, text)
    i2t = info_nce_rows(logits, valid)
    t2i = info_nce_rows(logits.T, valid)
    return masked_mean((i2t + t2i) / 2, valid), logits


def siglip_loss(
    image: jax.Array, text: jax.Array, valid: jax.Array, logit_scale: jax.Array, bias: jax.Array
):
    """Pairwise sigmoid loss of Zhai et al. (2023): every (image, caption) pair is a binary
    problem, +1 on the diagonal, -1 elsewhere; summed over pairs and divided by the batch size.

    Returns (loss, logits [B, C]) with logits = exp(logit_scale) * image . text + bias.
    """
    logits = jnp.exp(logit_scale) * jnp.einsum("BE,CE->BC", image, text) + bias
    labels = 2.0 * jnp.eye(logits.shape[0]) - 1.0
    pair = (valid[:, None] & valid[None, :]).astype(jnp.float32)
    total = -jnp.sum(pair * jax.nn.log_sigmoid(labels * logits))
    return total / jnp.maximum(jnp.sum(valid.astype(jnp.float32)), 1.0), logits


def caption_keys(tokens: jax.Array) -> jax.Array:
    """A 32-bit hash of each row's tokens [B, T] -> [B] (int32 arithmetic wraps), so equal
    captions compare equal without a [B, B, T] comparison."""
    weights = np.random.default_rng(0).integers(1, 2**31 - 1, tokens.shape[-1], dtype=np.int32)
    return jnp.sum(tokens.astype(jnp.int32) * jnp.asarray(weights), axis=-1)


def retrieval_top1(logits: jax.Array, valid: jax.Array, keys: jax.Array) -> dict[str, jax.Array]:
    """Top-1 retrieval within the batch, both ways, over valid pairs.

    A hit returns the query's own pair or one whose caption is identical (keys equal): the
    procedural captions repeat within a batch, and two images with the same caption are equally
    right answers.
    """
    logits = logits.astype(jnp.float32)
    best_caption = jnp.argmax(jnp.where(valid[None, :], logits, NEG), axis=1)  # [B]
    best_image = jnp.argmax(jnp.where(valid[:, None], logits, NEG), axis=0)  # [C]
    return {
        "retrieval/i2t_top1": masked_mean(keys[best_caption] == keys, valid),
        "retrieval/t2i_top1": masked_mean(keys[best_image] == keys, valid),
    }


def _clip(out, valid):
    loss, logits = clip_loss(out.image, out.text, valid, out.logit_scale)
    return loss, logits, {"clip/logit_scale": out.logit_scale}


def _siglip(out, valid):
    loss, logits = siglip_loss(out.image, out.text, valid, out.logit_scale, out.logit_bias)
    extra = {"siglip/logit_scale": out.logit_scale, "siglip/logit_bias": out.logit_bias}
    return loss, logits, extra


def _image_text_objective(name: str, pair_loss):
    """The factory of an objective on model.arch=dual_encoder whose loss over the batch's pairs is
    pair_loss(DualOutput, valid [B]) -> (loss, logits [B, C], extra metrics)."""

    def factory(config, model):
        from llmos_jax.config import ConfigError

        if config.model.arch != "dual_encoder":
            raise ConfigError(
                f"model.arch: objective {name!r} needs 'dual_encoder', got {config.model.arch!r}"
            )

        def loss_fn(params, batch, rng, frozen):
            del frozen  # no teacher or reference
            out = model.apply(
                {"params": params},
                batch["images"],
                batch["tokens"],
                batch["positions"],
                batch["segment_ids"],
                rngs={"dropout": rng},
            )
            valid = jnp.any(batch["segment_ids"] > 0, axis=1)  # padding rows have no caption
            loss, logits, extra = pair_loss(out, valid)
            metrics = {
                "loss": loss,
                "num_tokens": jnp.sum(valid.astype(jnp.float32)),  # pairs, for the averages
                **extra,
                **retrieval_top1(logits, valid, caption_keys(batch["tokens"])),
            }
            return loss, metrics

        return loss_fn

    return factory


make_clip_loss = _image_text_objective("clip", _clip)
make_siglip_loss = _image_text_objective("siglip", _siglip)
