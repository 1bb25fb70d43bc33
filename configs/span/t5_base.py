"""T5-base-sized span corruption (T5.1.1 shape: d=768, 12+12 layers, 12 heads, gated F=2048).

RMSNorm, SwiGLU and RoPE (Llama family) in place of T5.1.1's RMSNorm, gated GELU and bucketed
relative position biases; untied output head as in T5.1.1. Encoder rows of 512 tokens, decoder
targets padded to 154 (2 x 77 noise tokens), global batch 128, 2^19 steps as in T5; on a real
corpus (data.source=tfds, e.g. c4), bf16 compute.

    llmos train --config configs/span/t5_base.py --workdir runs/t5-base

Expected result: target loss falling steadily (T5 reports ~1.6-1.9 nats on C4 at this size with
its 32k SentencePiece vocabulary).
"""

from llmos_jax.config import base_config
from llmos_jax.objectives.corruption import sentinel_symbols


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "span"
    c.objective.noise_density = 0.15
    c.objective.mean_span_length = 3.0
    c.data.tokenizer.user_defined_symbols = sentinel_symbols(100)
    c.data.tokenizer.type = "unigram"
    c.model.arch = "encdec"
    c.model.family = "llama"
    c.model.vocab_size = 32128
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 2048
    c.model.max_len = 512
    c.model.dtype = "bfloat16"
    c.data.seq_len = 512
    c.train.steps = 524_288
    c.train.global_batch_size = 128
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 10_000
    c.optim.lr = 5e-4
    c.optim.warmup_steps = 10_000
    c.optim.decay = "cosine"
    c.optim.weight_decay = 0.0
    return c
