"""Permuted LM (XLNet), CPU-sized: the clm/tiny weights run as content and query streams.

A 4-layer Llama-style two-stream decoder (d=256, ~3M parameters; RoPE positions) on Python's
documentation, a random factorisation order per packed segment every step, the last 1/6 of each
order predicted.

    llmos train --config configs/plm/tiny.py --workdir runs/plm-tiny

Expected result (2-core CPU, several minutes: two streams cost about twice a decoder): held-out
loss on the predicted tokens falls from ~7.6 (ln V) to well under 5.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "plm"
    c.objective.prediction_k = 6  # K: predict the last 1/K of each segment's order (1 = all).
    c.model.arch = "two_stream"  # llmos_jax/models/two_stream.py; the parameters of a decoder.
    c.model.family = "llama"
    c.model.vocab_size = 2048
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.n_heads = 8
    c.model.n_kv_heads = 4
    c.model.d_ff = 768
    c.model.max_len = 256
    c.data.seq_len = 256
    c.train.steps = 300
    c.train.global_batch_size = 8
    c.train.log_every = 10
    c.train.eval_every = 100
    c.train.checkpoint_every = 100
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 30
    c.wandb.mode = "offline"
    return c
