"""Unsupervised SimCSE, CPU-sized: sentence embeddings from dropout noise on Python's docs.

A BERT-like bidirectional encoder (GPT-2 block: learned positions, LayerNorm, GELU; d=128,
2 layers, 4 heads, dropout 0.1) reads packed 64-token rows of pydoc_data.topics (offline). Each
segment of a row (a document or a piece of one) is a sentence: up to 4 per row are mean-pooled,
and each is matched to its own second dropout view among all sentences of the global batch
(InfoNCE, temperature 0.05).

    llmos train --config configs/simcse/tiny.py --workdir runs/simcse-tiny

Logged: eval/loss (InfoNCE without dropout: how well held-out sentences are told apart),
train/simcse/positive_cosine and train/simcse/negative_cosine (anisotropy).
Expected result (2-core CPU, 2-4 minutes): held-out loss 0.079 untrained -> 0.0095, the
negatives' mean cosine 0.44 -> 0.03, while two dropout views of a sentence stay at cosine 0.97.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "simcse"
    c.objective.temperature = 0.05  # tau: cosine similarities are divided by it (SimCSE's value)
    c.objective.max_segments = 4  # M: sentences pooled per packed row (static shapes)
    c.objective.min_segment_tokens = 4  # shorter segments (a lone eos, a bos) are not sentences
    m = c.model
    m.arch = "decoder"  # read bidirectionally: the objective builds a non-causal mask
    m.family = "gpt2"
    m.vocab_size = 2048
    m.d_model = 128
    m.n_layers = 2
    m.n_heads = 4
    m.n_kv_heads = 4
    m.d_ff = 512
    m.max_len = 64
    m.dropout_rate = 0.1  # the only augmentation: two passes, two dropout masks
    c.data.seq_len = 64
    t = c.train
    t.steps = 200
    t.global_batch_size = 32
    t.log_every = 20
    t.eval_every = 100
    t.checkpoint_every = 100
    o = c.optim
    o.lr = 1e-3
    o.warmup_steps = 20
    return c
