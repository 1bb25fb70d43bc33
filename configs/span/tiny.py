"""Span corruption (T5), CPU-sized: a 3+3-layer encoder-decoder on Python's documentation.

Llama-style blocks (d=256, RoPE, SwiGLU; ~4M parameters), a 2,048-piece BPE tokenizer with T5's
100 sentinels reserved; 15% of each row's tokens in spans of mean length 3 become targets.

    llmos train --config configs/span/tiny.py --workdir runs/span-tiny

Expected result (2-core CPU, several minutes): held-out target loss falls from ~7.6 (ln V) to
about 4.5 or below (sentinels are easy, span tokens are not).
"""

from llmos_jax.config import base_config
from llmos_jax.objectives.corruption import sentinel_symbols


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "span"
    c.objective.noise_density = 0.15  # Share of each row's tokens replaced by sentinel spans.
    c.objective.mean_span_length = 3.0  # Mean noise span length (spans per row = noise / this).
    # <extra_id_0>...: enough for the spans of one row (13 at seq_len 256, 26 at 512).
    c.data.tokenizer.user_defined_symbols = sentinel_symbols(100)
    c.model.arch = "encdec"  # llmos_jax/models/encdec.py; n_layers is each stack's depth.
    c.model.family = "llama"
    c.model.vocab_size = 2048
    c.model.d_model = 256
    c.model.n_layers = 3
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
