"""Model definitions. `build_model(config)` turns an experiment config into a Flax module.

`model.arch` picks the architecture from ARCHS; every module there has `init_args(seq_len)`, the
dummy inputs its `init` takes, so the trainer initialises any architecture the same way.
"""

from llmos_jax.models.dual_encoder import DualEncoder
from llmos_jax.models.encdec import EncoderDecoder
from llmos_jax.models.layers import ModelConfig
from llmos_jax.models.transformer import Decoder, attention_mask, cache_mask, init_cache
from llmos_jax.models.two_stream import TwoStreamDecoder

# arch name -> Flax module class taking (cfg: ModelConfig, deterministic: bool); a class with a
# `from_config(config, cfg, deterministic)` classmethod also reads its own config sections.
ARCHS = {"decoder": Decoder, "dual_encoder": DualEncoder}
ARCHS["encdec"] = EncoderDecoder  # span corruption (T5)
ARCHS["two_stream"] = TwoStreamDecoder  # permuted LM (XLNet)


def build_model(config, deterministic: bool = True):
    """The module for `config` (an ml_collections config with a `model` section)."""
    from llmos_jax.config import resolved_model

    cfg = ModelConfig.from_dict(resolved_model(config.model))
    arch = ARCHS[config.model.arch]
    if hasattr(arch, "from_config"):  # e.g. the dual encoder's model.vision section
        return arch.from_config(config, cfg, deterministic)
    return arch(cfg, deterministic=deterministic)


__all__ = [
    "ARCHS",
    "Decoder",
    "ModelConfig",
    "attention_mask",
    "build_model",
    "cache_mask",
    "init_cache",
]
