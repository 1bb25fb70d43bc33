"""GPT-2 small (124M: d=768, 12 layers, 12 heads, learned positions, tied embeddings, GELU).

    llmos train --config configs/clm/gpt2_small.py --workdir runs/gpt2s
    llmos train --config configs/clm/gpt2_small.py:cpu --workdir runs/gpt2s-cpu  # f32, tiny batch

The vocabulary is 50,304 (GPT-2's 50,257 rounded up to a multiple of 128 for the MXU) when training
our own tokenizer; importing OpenAI's weights (a later interop issue) uses 50,257.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.family = "gpt2"
    c.model.vocab_size = 50304
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 3072
    c.model.max_len = 1024
    c.model.dtype = "bfloat16"
    c.model.dropout_rate = 0.0
    c.data.seq_len = 1024
    c.train.steps = 20000
    c.train.global_batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 20
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 700
    if arg == "cpu":
        c.model.dtype = "float32"
        c.model.vocab_size = 8192
        c.data.seq_len = 256
        c.model.max_len = 256
        c.train.global_batch_size = 4
        c.train.steps = 20
        c.optim.warmup_steps = 2
    return c
