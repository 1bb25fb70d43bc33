"""A procedural image-caption dataset, generated offline: coloured shapes and what they are.

Each image shows one shape on black: a kind (circle, square, ...), a colour, a place (top left ...
center) and a size (small, large); its caption says exactly that, e.g. "a small red circle at the
top left". 5 kinds x 6 colours x 5 places x 2 sizes = 300 combinations.

* Held-out split by combination: combination c is held out iff `split_documents` (the text
  pipeline's hashed split) puts it there with `data.eval_fraction`, so evaluation measures
  zero-shot retrieval on combinations never seen in training (each attribute was seen).
* Every scene is a pure function of (seed, split, index): the combination and a small jitter of
  centre and radius come from `hash_uniform`, so image i does not depend on how many are drawn.
* Rows: "images" uint8 [N, H, W, 3] (H = W = `model.vision.image_size`), and one caption per row
  as "tokens", "segment_ids" (1 on [bos] caption [eos], 0 on padding), "positions" [N, T].
  The SentencePiece tokenizer is trained on the training captions (BPE: at 128 pieces every
  caption word is one piece).
"""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

import numpy as np

from llmos_jax.data.batching import hash_uniform
from llmos_jax.data.tokenizer import Tokenizer

SIZES = {"small": 0.13, "large": 0.19}  # radius as a fraction of the image side (4 px, 6 px at 32)
COLOURS = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "magenta": (255, 0, 255),
    "cyan": (0, 255, 255),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
PLACES = {  # (row, column) of the centre, as fractions of the image side
    "top left": (0.25, 0.25),
    "top right": (0.25, 0.75),
    "bottom left": (0.75, 0.25),
    "bottom right": (0.75, 0.75),
    "center": (0.5, 0.5),
}
# (size, colour, shape, place) of combination c is COMBINATIONS[c].
COMBINATIONS = tuple(itertools.product(SIZES, COLOURS, SHAPES, PLACES))
JITTER = 0.04  # The centre moves up to this fraction of the side along each axis...
RADIUS_JITTER = 0.1  # ...and the radius by up to +-10%: images of one caption differ.
_SPLIT_SALT = {"train": 100, "eval": 200}
_RENDER_CHUNK = 512  # scenes per vectorised step: bounds the [n, H, W] temporaries at 224 px


def caption(combination: tuple[str, str, str, str]) -> str:
    size, colour, shape, place = combination
    where = "in the center" if place == "center" else f"at the {place}"
    return f"a {size} {colour} {shape} {where}"


def sample_scenes(
    seed: int, split: str, count: int, allowed: np.ndarray, image_size: int
) -> dict[str, np.ndarray]:
    """Scenes 0..count-1 of `split`: "combination" [N] (drawn from `allowed`), "centre" [N, 2]
    (row, column) and "radius" [N], in pixels."""
    index = np.arange(count)
    u = [hash_uniform(seed, index, salt=_SPLIT_SALT[split] + k) for k in range(4)]
    combination = np.asarray(allowed)[(u[0] * len(allowed)).astype(np.int64)]
    size = np.array([SIZES[COMBINATIONS[c][0]] for c in combination])
    place = np.array([PLACES[COMBINATIONS[c][3]] for c in combination]).reshape(count, 2)
    offset = (np.stack([u[1], u[2]], axis=1) * 2 - 1) * JITTER
    radius = size * (1 + (u[3] * 2 - 1) * RADIUS_JITTER)
    return {
        "combination": combination,
        "centre": (place + offset) * image_size,
        "radius": radius * image_size,
    }


def _inside(shape: str, dy: np.ndarray, dx: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Which pixels lie in `shape` of radius r: dy, dx [N, H, W] from the centre, r [N, 1, 1]."""
    if shape == "circle":
        return dy**2 + dx**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) <= r
    if shape == "diamond":
        return np.abs(dy) + np.abs(dx) <= r
    if shape == "triangle":  # apex up, base at the bottom: as wide as tall
        return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)
    arm = r / 3  # cross: two bars of width 2r/3
    return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))


def render(scenes: dict[str, np.ndarray], image_size: int) -> np.ndarray:
    """uint8 images [N, H, W, 3]: each scene's shape in its colour on black (pixel centres test
    membership, so edges are hard)."""
    combination = scenes["combination"]
    grid = np.arange(image_size) + 0.5
    images = np.zeros((len(combination), image_size, image_size, 3), np.uint8)
    kinds = np.array([SHAPES.index(COMBINATIONS[c][2]) for c in combination])
    colours = np.array([COLOURS[COMBINATIONS[c][1]] for c in combination], np.uint8)
    for k, shape in enumerate(SHAPES):  # vectorised over the scenes of one kind...
        of_kind = np.flatnonzero(kinds == k)
        for start in range(0, len(of_kind), _RENDER_CHUNK):  # ...a chunk at a time
            idx = of_kind[start : start + _RENDER_CHUNK]
            dy = grid[None, :, None] - scenes["centre"][idx, 0, None, None]
            dx = grid[None, None, :] - scenes["centre"][idx, 1, None, None]
            mask = _inside(shape, dy, dx, scenes["radius"][idx, None, None])
            images[idx] = mask[..., None] * colours[idx, None, None, :]
    return images


def caption_rows(tokenizer: Tokenizer, texts: list[str], seq_len: int) -> dict[str, np.ndarray]:
    """One caption per row: [bos] ids [eos] then padding; int32 [N, T] tokens / segment_ids /
    positions. A caption longer than T raises (truncating would cut what it says)."""
    from llmos_jax.config import ConfigError

    encoded = tokenizer.encode_batch(texts)
    longest = max(len(ids) + 2 for ids in encoded)
    if longest > seq_len:
        raise ConfigError(f"data.seq_len: {seq_len} is shorter than a caption ({longest} tokens)")
    tokens = np.zeros((len(texts), seq_len), np.int32)
    segment_ids = np.zeros_like(tokens)
    for i, ids in enumerate(encoded):
        row = [tokenizer.bos_id, *ids, tokenizer.eos_id]
        tokens[i, : len(row)] = row
        segment_ids[i, : len(row)] = 1
    positions = np.where(segment_ids > 0, np.arange(seq_len, dtype=np.int32), 0)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions}


def build_shapes_data(config: Any, workdir: str | None = None):
    """The DataBundle of `data.source = "shapes"`: data.shapes.num_train / num_eval scenes at
    model.vision.image_size, held out by combination with data.eval_fraction."""
    from llmos_jax.config import ConfigError
    from llmos_jax.data.pipeline import DataBundle, get_tokenizer, split_documents

    d, seed = config.data, int(config.seed)
    if "vision" not in config.model:
        raise ConfigError("model.vision.image_size: data.source='shapes' renders at this size")
    if "shapes" not in d:
        raise ConfigError("data.shapes: data.source='shapes' needs num_train and num_eval")
    size = int(config.model.vision.image_size)
    held_out = split_documents(len(COMBINATIONS), float(d.eval_fraction), seed)
    texts = [caption(c) for c in COMBINATIONS]
    train_texts = [t for t, h in zip(texts, held_out) if not h]
    tokenizer = get_tokenizer(config, train_texts, workdir)
    rows_of_combination = caption_rows(tokenizer, texts, int(d.seq_len))

    splits = {}
    for split, count, allowed in (
        ("train", int(d.shapes.num_train), np.flatnonzero(~held_out)),
        ("eval", int(d.shapes.num_eval), np.flatnonzero(held_out)),
    ):
        if count <= 0:
            raise ConfigError(f"data.shapes.num_{split}: must be positive, got {count}")
        scenes = sample_scenes(seed, split, count, allowed, size)
        rows = {k: v[scenes["combination"]] for k, v in rows_of_combination.items()}
        splits[split] = {"images": render(scenes, size), **rows}

    description = (
        f"procedural shapes {size}x{size}: {len(COMBINATIONS)} combinations, "
        f"{int(held_out.sum())} held out"
    )
    digest = hashlib.sha256(json.dumps([description, seed, tokenizer.sha256]).encode())
    for split in ("train", "eval"):
        for key in sorted(splits[split]):
            digest.update(split.encode() + key.encode() + splits[split][key].tobytes())
    stats = {
        "combinations": len(COMBINATIONS),
        "held_out_combinations": int(held_out.sum()),
        "train_rows": int(d.shapes.num_train),
        "eval_rows": int(d.shapes.num_eval),
    }
    return DataBundle(
        tokenizer, splits["train"], splits["eval"], digest.hexdigest(), description, stats
    )
