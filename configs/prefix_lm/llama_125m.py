"""A ~125M-parameter decoder-only prefix LM (the clm/llama_125m shape: d=768, 12 layers).

    llmos train --config configs/prefix_lm/llama_125m.py --workdir runs/prefix-125m
    llmos train --config configs/prefix_lm/llama_125m.py:span --workdir runs/prefix-125m-span

Default: random-split prefix LM on rows of 1,024 tokens; ":span" is T5's denoising objective in
the prefix-LM layout on rows of 512 (plus 154 target slots), T5's decoder-only comparison point
to configs/span/t5_base.py. Global batch 64, bf16; on a real corpus (data.source=tfds).

Expected result: loss on the scored tokens falling steadily, MFU reported next to its convention.
"""

from llmos_jax.config import base_config
from llmos_jax.objectives.corruption import sentinel_symbols


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "prefix_lm"
    c.objective.prefix_task = "span" if arg == "span" else "lm"
    c.objective.noise_density = 0.15
    c.objective.mean_span_length = 3.0
    c.data.tokenizer.user_defined_symbols = sentinel_symbols(100)
    c.data.tokenizer.type = "unigram"
    c.model.arch = "decoder"
    c.model.family = "llama"
    c.model.vocab_size = 32000
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 2048
    c.model.max_len = 1024
    c.model.dtype = "bfloat16"
    c.data.seq_len = 512 if arg == "span" else 1024
    c.train.steps = 20_000
    c.train.global_batch_size = 64
    c.train.log_every = 50
    c.train.eval_every = 1000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 1000
    c.optim.lr = 6e-4
    c.optim.warmup_steps = 1000
    return c
