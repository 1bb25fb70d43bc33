"""Model definitions. `build_model(config)` turns an experiment config into a Flax module."""

from llmos_jax.models.layers import ModelConfig
from llmos_jax.models.transformer import Decoder, attention_mask, cache_mask, init_cache


def build_model(config, deterministic: bool = True) -> Decoder:
    """The Decoder for `config` (an ml_collections config with a `model` section)."""
    from llmos_jax.config import resolved_model

    return Decoder(ModelConfig.from_dict(resolved_model(config.model)), deterministic=deterministic)


__all__ = ["Decoder", "ModelConfig", "attention_mask", "build_model", "cache_mask", "init_cache"]
