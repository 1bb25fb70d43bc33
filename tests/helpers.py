"""Tiny configs and batches shared by the tests (kept small: the CI machine has 2 cores)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from llmos_jax.config import base_config


def tiny_config(family: str = "llama", **model):
    c = base_config()
    c.model.family = family
    c.model.vocab_size = 128
    c.model.d_model = 64
    c.model.n_layers = 2
    c.model.n_heads = 4
    c.model.n_kv_heads = 2 if family == "llama" else 4
    c.model.d_ff = 128
    c.model.max_len = 64
    for k, v in model.items():
        c.model[k] = v
    c.data.seq_len = 32
    c.train.global_batch_size = 8
    c.train.steps = 10
    c.optim.warmup_steps = 2
    c.wandb.mode = "disabled"
    return c


def random_batch(rng: np.random.Generator, b: int, t: int, vocab: int, docs_per_row: int = 2):
    """Packed-looking rows: `docs_per_row` segments each, positions restarting per segment."""
    tokens = rng.integers(4, vocab, (b, t)).astype(np.int32)
    bounds = np.sort(rng.choice(np.arange(1, t), docs_per_row - 1, replace=False))
    seg = np.ones((b, t), np.int32)
    pos = np.zeros((b, t), np.int32)
    start = 0
    for i, end in enumerate(list(bounds) + [t]):
        seg[:, start:end] = i + 1
        pos[:, start:end] = np.arange(end - start)
        start = end
    return {
        "tokens": tokens,
        "segment_ids": seg,
        "positions": pos,
        "loss_mask": np.ones((b, t), np.int32),
    }


def init_params(model, seq_len: int = 16, seed: int = 0):
    import jax

    from llmos_jax.models import attention_mask

    tok = jnp.zeros((1, seq_len), jnp.int32)
    pos = jnp.arange(seq_len)[None]
    variables = model.init(
        jax.random.PRNGKey(seed), tok, pos, attention_mask(jnp.ones((1, seq_len), jnp.int32))
    )
    import flax.linen as nn

    return nn.meta.unbox(variables["params"])
