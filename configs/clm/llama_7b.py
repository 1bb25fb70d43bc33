"""Llama-2-7B shape (d=4096, 32 layers, 32 heads, MLP 11008, vocab 32000): a pod-scale preset.

    llmos train --config configs/clm/llama_7b.py --workdir gs://BUCKET/runs/l7b

Needs a TPU pod slice or a multi-GPU cluster: bf16 compute, full remat, parameters and optimizer
state FSDP-sharded over every device, tensor parallelism optional (--config.mesh.tensor=4).
Global batch 512 x 4,096 tokens (2M tokens a step) as in the Llama 2 paper.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.model.family = "llama"
    c.model.vocab_size = 32000
    c.model.d_model = 4096
    c.model.n_layers = 32
    c.model.n_heads = 32
    c.model.n_kv_heads = 32
    c.model.d_ff = 11008
    c.model.max_len = 4096
    c.model.norm_eps = 1e-5
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.data.seq_len = 4096
    c.train.steps = 500000
    c.train.global_batch_size = 512
    c.train.log_every = 10
    c.train.eval_every = 5000
    c.train.eval_batches = 10
    c.train.checkpoint_every = 1000
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 2000
    c.optim.weight_decay = 0.1
    c.mesh.data = 1
    c.mesh.fsdp = -1
    return c
