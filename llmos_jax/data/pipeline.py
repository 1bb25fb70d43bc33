"""The data entry point: documents -> split -> clean -> dedupe -> tokenizer -> packed rows.

* Split: document i is held out iff `uniform(seed, i) < eval_fraction`, with `uniform` a
  splitmix64 hash (stable across numpy versions and hosts), so the split of a document does not
  depend on how many documents follow it. At least one document goes each way.
* The tokenizer is trained on the train documents only, so held-out text never shapes it.
* Batching of the packed rows (shuffled, a pure function of (seed, example index)) is in
  `batching`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from typing import Any

import grain
import numpy as np

from llmos_jax.data.batching import hash_uniform
from llmos_jax.data.cleaning import clean_text
from llmos_jax.data.packing import pack_documents
from llmos_jax.data.sources import load_source
from llmos_jax.data.tokenizer import Tokenizer, train_tokenizer

log = logging.getLogger(__name__)
TOKENIZER_FILE = "tokenizer.model"
_ENCODE_BATCH = 64  # Documents per SentencePiece call (which threads over the batch).


@dataclasses.dataclass
class DataBundle:
    """Everything training needs from the data side."""

    tokenizer: Tokenizer
    train: dict[str, np.ndarray]  # Packed rows: "tokens", "segment_ids", "positions", [N, T].
    eval: dict[str, np.ndarray]
    fingerprint: str  # sha256 of source description, cleaned text, split and tokenizer.
    source_description: str  # e.g. "pydoc_data.topics (Python 3.11.7), 440 passages"
    stats: dict[str, int] = dataclasses.field(default_factory=dict)


def split_documents(num_docs: int, eval_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of held-out documents; at least one held out and one kept (if possible)."""
    if num_docs < 2:
        raise ValueError(f"need at least 2 documents to split train/eval, got {num_docs}")
    u = hash_uniform(seed, np.arange(num_docs), salt=1)
    held_out = u < eval_fraction
    if not held_out.any():
        held_out[np.argmin(u)] = True
    if held_out.all():
        held_out[np.argmax(u)] = False
    return held_out


def _clean_all(texts: list[str], data_cfg: Any) -> list[str]:
    flags = dict(
        strip_html=bool(data_cfg.strip_html),
        strip_urls=bool(data_cfg.strip_urls),
        lowercase=bool(data_cfg.lowercase),
        strip_punctuation=bool(data_cfg.strip_punctuation),
    )
    # Pure Python (the GIL): threads would not help; grain keeps the map lazy and in order.
    return list(grain.MapDataset.source(texts).map(lambda t: clean_text(t, **flags)))


def _keep_mask(cleaned: list[str]) -> np.ndarray:
    """Drops documents that cleaning emptied (e.g. markup only) and exact duplicates.

    The first copy of a duplicate is kept, wherever the split puts it: pydoc (3.11) repeats 33 of
    its 440 passages across topics, and a copy on each side of the split would leak eval text
    into training.
    """
    seen: set[str] = set()
    keep = np.zeros(len(cleaned), dtype=bool)
    for i, text in enumerate(cleaned):
        if text.strip() and text not in seen:
            seen.add(text)
            keep[i] = True
    return keep


def tokenize_all(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, in order, through a grain pipeline.

    Batches of documents go to SentencePiece, which encodes a batch on its own threads; results
    come back in input order whatever the thread count, so this stays deterministic.
    """
    encoded = (
        grain.MapDataset.source(texts)
        .batch(_ENCODE_BATCH, batch_fn=list)
        .map(tokenizer.encode_batch)
        .to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))
    )
    return [ids for batch in encoded for ids in batch]


def get_tokenizer(config: Any, train_texts: list[str], workdir: str | None) -> Tokenizer:
    """data.tokenizer.path, else workdir's tokenizer.model, else one trained on `train_texts`."""
    from etils import epath

    t = config.data.tokenizer
    if t.path:
        tokenizer, origin = Tokenizer.load(t.path), f"data.tokenizer.path={t.path}"
    elif workdir and (epath.Path(workdir) / TOKENIZER_FILE).exists():
        path = epath.Path(workdir) / TOKENIZER_FILE
        tokenizer, origin = Tokenizer.load(path), str(path)
    else:
        tokenizer = train_tokenizer(
            train_texts, int(config.model.vocab_size), t.type, tuple(t.user_defined_symbols)
        )
        origin = f"trained ({t.type}, {tokenizer.vocab_size} pieces)"
        if workdir:
            tokenizer.save(epath.Path(workdir) / TOKENIZER_FILE)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"model.vocab_size={config.model.vocab_size}: smaller than the tokenizer's "
            f"{tokenizer.vocab_size} pieces ({origin})"
        )
    log.info("tokenizer: %s, %s", origin, tokenizer)
    return tokenizer


def build_data(config: Any, workdir: str | os.PathLike | None = None) -> DataBundle:
    """Loads, splits, cleans, deduplicates, tokenizes and packs the configured data.

    The tokenizer is data.tokenizer.path if set, else workdir/tokenizer.model if it exists, else
    trained on the train documents only (so held-out text never shapes the vocabulary) and saved
    there.
    """
    data_cfg = config.data
    if data_cfg.source == "shapes":  # generated images and captions, not documents
        from llmos_jax.data.shapes import build_shapes_data

        return build_shapes_data(config, None if workdir is None else str(workdir))
    docs, description = load_source(data_cfg)
    held_out = split_documents(len(docs), float(data_cfg.eval_fraction), int(config.seed))
    cleaned = _clean_all([d.text for d in docs], data_cfg)
    keep = _keep_mask(cleaned)
    train_texts = [t for t, k, h in zip(cleaned, keep, held_out, strict=True) if k and not h]
    eval_texts = [t for t, k, h in zip(cleaned, keep, held_out, strict=True) if k and h]
    if not train_texts or not eval_texts:
        raise ValueError(
            f"data: nothing left to train or evaluate on after cleaning ({description})"
        )

    tokenizer = get_tokenizer(config, train_texts, None if workdir is None else str(workdir))
    seq_len = int(data_cfg.seq_len)
    specials = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    train_ids = tokenize_all(tokenizer, train_texts)
    eval_ids = tokenize_all(tokenizer, eval_texts)
    train = pack_documents(train_ids, seq_len, **specials)
    evaluation = pack_documents(eval_ids, seq_len, **specials)

    digest = hashlib.sha256()
    settings = {
        "seed": int(config.seed),
        "eval_fraction": float(data_cfg.eval_fraction),
        "seq_len": seq_len,
        "tokenizer": tokenizer.sha256,
    }
    digest.update(json.dumps([description, settings], sort_keys=True).encode())
    for text, k, h in zip(cleaned, keep, held_out, strict=True):
        if k:  # Length-prefixed, so document boundaries are part of the hash.
            digest.update(f"{'E' if h else 'T'}{len(text)}:".encode() + text.encode())
    stats = {
        "documents": len(docs),
        "dropped_documents": int((~keep).sum()),
        "train_documents": len(train_texts),
        "eval_documents": len(eval_texts),
        "train_tokens": int((train["segment_ids"] > 0).sum()),
        "eval_tokens": int((evaluation["segment_ids"] > 0).sum()),
        "train_rows": int(train["tokens"].shape[0]),
        "eval_rows": int(evaluation["tokens"].shape[0]),
    }
    log.info("data: %s; %s", description, stats)
    return DataBundle(tokenizer, train, evaluation, digest.hexdigest(), description, stats)
