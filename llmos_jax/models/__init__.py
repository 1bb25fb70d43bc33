"""Model definitions. `build_model(config)` turns an experiment config into a Flax module.

`model.arch` picks the architecture from ARCHS; every module there has `init_args(seq_len)`, the
dummy inputs its `init` takes, so the trainer initialises any architecture the same way.
"""

from llmos_jax.models.layers import ModelConfig
from llmos_jax.models.transformer import Decoder, attention_mask, cache_mask, init_cache

# arch name -> Flax module class taking (cfg: ModelConfig, deterministic: bool).
ARCHS = {"decoder": Decoder}


def build_model(config, deterministic: bool = True):
    """The module for `config` (an ml_collections config with a `model` section)."""
    from llmos_jax.config import resolved_model

    cfg = ModelConfig.from_dict(resolved_model(config.model))
    return ARCHS[config.model.arch](cfg, deterministic=deterministic)


__all__ = ["ARCHS", "Decoder", "ModelConfig", "attention_mask", "build_model", "cache_mask",
           "init_cache"]
