"""CLIP ViT-B/16 (Radford et al., 2021): the towers and optimizer of OpenAI's model.

Image tower: ViT-B/16 at 224 px (width 768, 12 layers, 12 heads, MLP 3072; mean-pooled patches
instead of a class token). Text tower: 12 layers, width 512, 8 heads, MLP 2048, 77 tokens, read
bidirectionally and mean-pooled (CLIP reads causally and takes the eos state). Shared width 512;
AdamW (lr 5e-4, beta2 0.98, eps 1e-6, weight decay 0.2), warmup 2,000 steps, cosine decay.

    llmos train --config configs/clip/vit_b16.py --workdir runs/clip-b16

The only image-text source that works offline is the procedural shapes set, rendered here at
224 px: 32,768 training images (4.9 GB of uint8 in host memory) and a global batch of 4,096
(CLIP used 32,768 pairs of a 400M-pair corpus; a batch must not exceed the dataset, or the same
image would be its own negative). Expected result on one 8-GPU host: held-out retrieval near 1.
"""

import math

import ml_collections

from llmos_jax.config import base_config


def get_config(arg: str | None = None):
    c = base_config()
    c.objective.name = "clip"
    m = c.model
    m.arch = "dual_encoder"
    m.family = "gpt2"  # LayerNorm, GELU, biases: CLIP's text block
    m.vocab_size = 49408  # CLIP's BPE size (ours is trained on the captions: far fewer pieces)
    m.d_model = 512
    m.n_layers = 12
    m.n_heads = 8
    m.n_kv_heads = 8
    m.d_ff = 2048
    m.max_len = 77
    m.dtype = "bfloat16"
    m.vision = ml_collections.ConfigDict()
    m.vision.image_size = 224
    m.vision.patch_size = 16
    m.vision.d_model = 768
    m.vision.n_layers = 12
    m.vision.n_heads = 12
    m.vision.d_ff = 3072
    m.embed_dim = 512
    m.logit_scale_init = math.log(1 / 0.07)
    m.logit_bias_init = 0.0  # unused by CLIP
    d = c.data
    d.source = "shapes"
    d.seq_len = 77
    d.eval_fraction = 0.1
    d.shapes = ml_collections.ConfigDict()
    d.shapes.num_train = 32768
    d.shapes.num_eval = 4096
    t = c.train
    t.steps = 20000
    t.global_batch_size = 4096
    t.log_every = 50
    t.eval_every = 1000
    t.checkpoint_every = 1000
    o = c.optim
    o.lr = 5e-4
    o.warmup_steps = 2000
    o.b2 = 0.98
    o.eps = 1e-6
    o.weight_decay = 0.2
    o.end_lr_ratio = 0.0
    return c
