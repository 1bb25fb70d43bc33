"""Span corruption (T5; Raffel et al., 2020) for model.arch=encdec.

Each step corrupts the packed rows on device (llmos_jax/objectives/corruption.py: T5's noise
mask, sentinels numbered per document, static shapes); the encoder reads the corrupted text, the
decoder predicts every sentinel and span token. Encoder, decoder and cross-attention masks come
from segment ids, so documents packed into one row never see each other. Metric:
`span/accuracy` over the targets.
"""

from __future__ import annotations

import jax

from llmos_jax.models import attention_mask
from llmos_jax.objectives.common import masked_cross_entropy
from llmos_jax.objectives.corruption import corrupt_spans, decoder_length, sample_noise, span_setup
from llmos_jax.objectives.options import require_arch


def make_span_loss(config, model, tokenizer=None):
    """Returns loss_fn(params, batch, rng, frozen) -> (loss, metrics) for model.arch=encdec."""
    require_arch(config, "encdec")
    density, mean, sentinels = span_setup(config, tokenizer)
    z_loss = float(config.objective.z_loss)

    def loss_fn(params, batch, rng, frozen):
        del frozen  # no teacher or reference
        noise_rng, dropout_rng = jax.random.split(rng)
        noise = sample_noise(noise_rng, batch, density, mean)
        dec_len = decoder_length(batch["tokens"].shape[1], density, mean)
        s = corrupt_spans(batch["tokens"], batch["segment_ids"], noise, sentinels, dec_len)
        enc_seg, dec_seg = s["enc_segment_ids"], s["dec_segment_ids"]
        # Decoder padding may read anything: a query row with no key would give NaNs.
        cross = (dec_seg[:, :, None] == enc_seg[:, None, :]) | (dec_seg == 0)[:, :, None]
        logits = model.apply(
            {"params": params},
            s["enc_tokens"],
            s["enc_positions"],
            attention_mask(enc_seg, causal=False),
            s["dec_inputs"],
            s["dec_positions"],
            attention_mask(dec_seg, causal=True),
            cross[:, None],
            rngs={"dropout": dropout_rng},
        )
        loss, metrics = masked_cross_entropy(logits, s["dec_targets"], dec_seg > 0, z_loss)
        metrics["span/accuracy"] = metrics.pop("accuracy")
        return loss, metrics

    return loss_fn
