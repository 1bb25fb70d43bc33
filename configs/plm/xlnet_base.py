"""XLNet-base-sized permuted LM (d=768, 12 layers, 12 heads, F=3072, ~110M parameters).

RoPE stands in for Transformer-XL's relative positions (no segment recurrence or memory).
Sequences of 512, K=6 (the last sixth of every order predicted), global batch 256, bf16 compute;
on a real corpus (data.source=tfds).

    llmos train --config configs/plm/xlnet_base.py --workdir runs/xlnet-base

Expected result: predicted-token loss falling steadily; fine-tune as a bidirectional encoder
(the content stream under a non-causal mask is a plain decoder's weights).
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "plm"
    c.objective.prediction_k = 6
    c.model.arch = "two_stream"
    c.model.family = "llama"
    c.model.vocab_size = 32000
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 3072
    c.model.max_len = 512
    c.model.dropout_rate = 0.1
    c.model.dtype = "bfloat16"
    c.data.tokenizer.type = "unigram"
    c.data.seq_len = 512
    c.train.steps = 500_000
    c.train.global_batch_size = 256
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 10_000
    c.optim.lr = 4e-4
    c.optim.warmup_steps = 10_000
    c.optim.decay = "linear"
    c.optim.end_lr_ratio = 0.0
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.01
    return c
