"""BERT-base-sized masked LM (d=768, 12 layers, 12 heads, F=3072, ~110M parameters).

GPT-2 family blocks give BERT's ingredients (learned positions, LayerNorm, GELU, biases, tied
output embedding), pre-norm rather than BERT's post-norm. Sequences of 512, global batch 256,
1M steps at lr 1e-4 as in the paper; on a real corpus (data.source=tfds), bf16 compute.

    llmos train --config configs/mlm/bert_base.py --workdir runs/bert-base
    llmos train --config configs/mlm/bert_base.py:wwm --workdir runs/bert-base-wwm

Expected result: masked-token accuracy climbing past ~0.6 on English text, as BERT reports.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "mlm"
    c.objective.mask_rate = 0.15
    c.objective.mask_token_rate = 0.8
    c.objective.random_token_rate = 0.1
    c.objective.whole_word_masking = arg == "wwm"
    c.objective.mask_token = "<mask>"
    c.data.tokenizer.user_defined_symbols = ("<mask>",)
    c.data.tokenizer.type = "unigram"
    c.model.arch = "decoder"
    c.model.family = "gpt2"
    c.model.vocab_size = 32000
    c.model.d_model = 768
    c.model.n_layers = 12
    c.model.n_heads = 12
    c.model.n_kv_heads = 12
    c.model.d_ff = 3072
    c.model.max_len = 512
    c.model.dropout_rate = 0.1
    c.model.dtype = "bfloat16"
    c.data.seq_len = 512
    c.train.steps = 1_000_000
    c.train.global_batch_size = 256
    c.train.log_every = 100
    c.train.eval_every = 10_000
    c.train.eval_batches = 20
    c.train.checkpoint_every = 10_000
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 10_000
    c.optim.decay = "linear"
    c.optim.end_lr_ratio = 0.0
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.01
    return c
