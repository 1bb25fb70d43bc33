"""Unsupervised SimCSE with a BERT-base-sized encoder (Gao et al., 2021): d=768, 12 layers,
12 heads, MLP 3072, learned positions, LayerNorm, GELU, dropout 0.1; temperature 0.05.

    llmos train --config configs/simcse/bert_base.py --workdir runs/simcse-base
    # SimCSE's own corpus: one sentence per record, e.g. wiki1m converted to .jsonl
    llmos train --config configs/simcse/bert_base.py --config.data.source=files \
        --config.data.paths="('wiki1m.jsonl',)" --workdir runs/simcse-wiki

Sentences are packed 128 tokens to a row (SimCSE caps a sentence at 32 tokens): up to 8 per row
are pooled, so a global batch of 64 rows holds a few hundred sentences (SimCSE used 64). SimCSE
starts from a pretrained BERT; from scratch, train the encoder first (e.g. the mlm objective) and
start from its checkpoint. Expected result: held-out loss falling, negatives' cosine near 0.
"""

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "simcse"
    c.objective.temperature = 0.05
    c.objective.max_segments = 8
    c.objective.min_segment_tokens = 4
    m = c.model
    m.arch = "decoder"
    m.family = "gpt2"
    m.vocab_size = 32000
    m.d_model = 768
    m.n_layers = 12
    m.n_heads = 12
    m.n_kv_heads = 12
    m.d_ff = 3072
    m.max_len = 128
    m.dropout_rate = 0.1
    m.dtype = "bfloat16"
    c.data.seq_len = 128
    t = c.train
    t.steps = 10000
    t.global_batch_size = 64
    t.log_every = 50
    t.eval_every = 500
    t.eval_batches = 20
    t.checkpoint_every = 1000
    o = c.optim
    o.lr = 3e-4  # a from-scratch rate; SimCSE fine-tunes a pretrained BERT at 3e-5
    o.warmup_steps = 500
    return c
