"""Packed train / held-out rows of a config's data, tokenized by any tokenizer.

`llmos_jax.data.build_data` only accepts llmos' own SentencePiece model (and trains one into the
run directory when there is none), so evaluating a Hugging Face model goes through here: the same
documents, the same split, cleaning and deduplication, then the given tokenizer and the same
packing, so its perplexity is measured on exactly the text an llmos run is.
"""

from __future__ import annotations

import numpy as np

from llmos_jax.data import load_source, pack_documents
from llmos_jax.data.pipeline import _clean_all, _keep_mask, split_documents
from llmos_jax.interop.tokenizers import TextTokenizer


def tokenized_splits(
    config, tokenizer: TextTokenizer
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train rows, held-out rows) as build_data packs them, with `tokenizer`'s ids."""
    d = config.data
    docs, description = load_source(d)
    held_out = split_documents(len(docs), float(d.eval_fraction), int(config.seed))
    # The pipeline's own cleaning and dedupe helpers: reimplementing them here could drift.
    cleaned = _clean_all([doc.text for doc in docs], d)
    keep = _keep_mask(cleaned)
    train = [t for t, k, h in zip(cleaned, keep, held_out, strict=True) if k and not h]
    held = [t for t, k, h in zip(cleaned, keep, held_out, strict=True) if k and h]
    if not train or not held:
        raise ValueError(f"data: nothing left to train or evaluate on ({description})")
    specials = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
    rows = []
    for texts in (train, held):
        ids = tokenizer.encode_batch(texts)
        too_big = max((max(x, default=0) for x in ids), default=0)
        if too_big >= config.model.vocab_size:
            raise ValueError(
                f"tokenizer id {too_big} >= model.vocab_size={config.model.vocab_size}"
            )
        rows.append(pack_documents(ids, int(d.seq_len), **specials))
    return rows[0], rows[1]
