"""SigLIP, CPU-sized: configs/clip/tiny.py (same towers, data and optimizer) with the pairwise
sigmoid loss and its initial temperature and bias (Zhai et al., 2023: t' = log 10, b = -10).

    llmos train --config configs/siglip/tiny.py --workdir runs/siglip-tiny

Logged: eval/loss, eval/retrieval/i2t_top1, eval/retrieval/t2i_top1 (within each eval batch of
64), train/siglip/logit_scale and train/siglip/logit_bias.
Expected result (2-core CPU, about 2 minutes): held-out top-1 0.57 image->text and 0.58
text->image (chance 0.04). Slower than CLIP at this batch: for its first ~60 steps every pair
sits at the same logit (loss 5.15) before the pairs separate.
"""

import math
import pathlib

from llmos_jax.config import load_config


def get_config(arg: str | None = None):
    c = load_config(str(pathlib.Path(__file__).parents[1] / "clip" / "tiny.py"))
    c.objective.name = "siglip"
    c.model.logit_scale_init = math.log(10.0)  # learnable log inverse temperature
    c.model.logit_bias_init = -10.0  # learnable bias: starts from "most pairs are negatives"
    return c
