"""Llama-style ~125M-parameter causal LM (GPT-3 Small shape: d=768, 12 layers, 12 heads).

    llmos train --config configs/clm/llama_125m.py --workdir runs/l125m
    llmos train --config configs/clm/llama_125m.py:cpu --workdir runs/l125m-cpu  # f32, tiny batch

Defaults target one GPU/TPU host: bf16 compute, global batch 64 x 1,024 tokens, 20k steps,
data-parallel over every device. On TPU pods set mesh.fsdp to shard parameters, e.g.
--config.mesh.fsdp=8. Expected result on a real corpus (source=tfds): loss falling steadily,
MFU reported next to its convention.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 32000
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 2048
    c.model.max_len = 1024
    c.model.dtype = "bfloat16"
    c.data.seq_len = 1024
    c.train.steps = 20000
    c.train.global_batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 1000
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 1000
    c.optim.b2 = 0.95
    if arg == "cpu":
        c.model.dtype = "float32"
        c.model.vocab_size = 8192
        c.data.seq_len = 256
        c.model.max_len = 256
        c.train.global_batch_size = 4
        c.train.steps = 20
        c.optim.warmup_steps = 2
    return c
