"""Masked LM (BERT), CPU-sized: the clm/tiny encoder under a bidirectional mask.

A 4-layer Llama-style encoder (d=256, ~3M parameters) on Python's documentation, a 2,048-piece
BPE tokenizer with "<mask>" reserved, 15% of tokens selected (80% <mask>, 10% random, 10% kept).

    llmos train --config configs/mlm/tiny.py --workdir runs/mlm-tiny
    llmos train --config configs/mlm/tiny.py:wwm --workdir runs/mlm-tiny-wwm  # whole-word masking

Expected result (2-core CPU, a few minutes): held-out masked-token loss falls from ~7.6 (ln V) to
about 5 or below, `eval/mlm/accuracy` rising from 0 to above 0.15.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "mlm"
    c.objective.mask_rate = 0.15  # Share of maskable tokens (or words) selected for prediction.
    c.objective.mask_token_rate = 0.8  # Of the selected: replaced by mask_token...
    c.objective.random_token_rate = 0.1  # ...by a random ordinary piece; the rest kept as is.
    c.objective.whole_word_masking = arg == "wwm"  # Select whole "▁"-started words.
    c.objective.mask_token = "<mask>"  # Must be in data.tokenizer.user_defined_symbols.
    c.data.tokenizer.user_defined_symbols = ("<mask>",)
    c.model.arch = "decoder"  # The decoder's blocks; the objective makes attention bidirectional.
    c.model.family = "llama"
    c.model.vocab_size = 2048
    c.model.d_model = 256
    c.model.n_layers = 4
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
