"""SigLIP B/16 at 224 px (Zhai et al., 2023): configs/clip/vit_b16.py's image tower and data
with SigLIP's text tower (12 layers, width 768, 12 heads, 64 tokens, 32k vocabulary), shared
width 768, the sigmoid loss with t' = log 10 and b = -10, and AdamW lr 1e-3, weight decay 1e-4,
beta2 0.95.

    llmos train --config configs/siglip/vit_b16.py --workdir runs/siglip-b16

Expected result on one 8-GPU host: held-out retrieval near 1 (see the CLIP preset for the data).
"""

import math
import pathlib

from llmos_jax.config import load_config


def get_config(arg: str | None = None):
    c = load_config(str(pathlib.Path(__file__).parents[1] / "clip" / "vit_b16.py"))
    c.objective.name = "siglip"
    m = c.model
    m.vocab_size = 32000
    m.d_model = 768
    m.n_heads = 12
    m.n_kv_heads = 12
    m.d_ff = 3072
    m.max_len = 64
    m.embed_dim = 768
    m.logit_scale_init = math.log(10.0)
    m.logit_bias_init = -10.0
    c.data.seq_len = 64
    o = c.optim
    o.lr = 1e-3
    o.b2 = 0.95
    o.eps = 1e-8
    o.weight_decay = 1e-4
    return c
