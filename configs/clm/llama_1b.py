"""Llama-style ~1.2B-parameter causal LM (d=2048, 16 layers, 32 heads, 8 KV heads, MLP 8192).

    llmos train --config configs/clm/llama_1b.py --workdir gs://BUCKET/runs/l1b

bf16 compute with full rematerialisation of each block; parameters FSDP-sharded over all devices
by default (mesh.fsdp=-1), global batch 256 x 2,048 tokens. On one H100 use
--config.mesh.fsdp=1 --config.train.global_batch_size=8 --config.model.remat=dots.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 32000
    c.model.d_model = 2048
    c.model.n_layers = 16
    c.model.n_heads = 32
    c.model.n_kv_heads = 8
    c.model.d_ff = 8192
    c.model.max_len = 2048
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.data.seq_len = 2048
    c.train.steps = 50000
    c.train.global_batch_size = 256
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 1000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2000
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
