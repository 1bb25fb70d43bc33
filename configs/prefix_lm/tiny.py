"""Prefix LM, CPU-sized: the clm/tiny decoder, bidirectional over a prefix and causal after.

    llmos train --config configs/prefix_lm/tiny.py --workdir runs/prefix-tiny       # random split
    llmos train --config configs/prefix_lm/tiny.py:span --workdir runs/prefix-span  # T5 denoising

":span" trains T5's span corruption in the decoder-only prefix-LM layout [corrupted text;
targets]. Expected result (2-core CPU, a few minutes): held-out loss on the scored tokens falls
from ~7.6 (ln V) to well under 5.
"""

from llmos_jax.config import base_config
from llmos_jax.objectives.corruption import sentinel_symbols


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "prefix_lm"
    c.objective.prefix_task = "span" if arg == "span" else "lm"  # lm | span
    c.objective.noise_density = 0.15  # prefix_task=span: share of tokens in sentinel spans.
    c.objective.mean_span_length = 3.0  # prefix_task=span: mean span length.
    # Sentinels are reserved either way, so --config.objective.prefix_task=span works too.
    c.data.tokenizer.user_defined_symbols = sentinel_symbols(100)
    c.model.arch = "decoder"
    c.model.family = "llama"
    c.model.vocab_size = 2048
    c.model.d_model = 256
    c.model.n_layers = 4
    c.model.n_heads = 8
    c.model.n_kv_heads = 4
    c.model.d_ff = 768
    c.model.max_len = 512  # The span layout is seq_len + 2 * noise tokens long.
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
