"""Data: sources, cleaning, SentencePiece tokenizer, packing and deterministic batching.

`build_data(config, workdir)` is the entry point; `TrainBatches` and `eval_batches` turn its
packed rows into host-local batches. The tfds names (`build_local_tfds`, `LocalTextBuilder`) are
imported on first use: tensorflow_datasets takes seconds to import.
"""

from llmos_jax.data.batching import (
    TrainBatches,
    eval_batches,
    next_token_targets,
    unigram_perplexity,
)
from llmos_jax.data.cleaning import clean_text
from llmos_jax.data.packing import pack_documents
from llmos_jax.data.pipeline import DataBundle, build_data
from llmos_jax.data.sources import Document, load_documents, load_source
from llmos_jax.data.tokenizer import Tokenizer, train_tokenizer

_LAZY = ("build_local_tfds", "LocalTextBuilder")


def __getattr__(name: str):
    if name in _LAZY:
        from llmos_jax.data import tfds_local

        return getattr(tfds_local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DataBundle",
    "Document",
    "LocalTextBuilder",
    "TrainBatches",
    "Tokenizer",
    "build_data",
    "build_local_tfds",
    "clean_text",
    "eval_batches",
    "load_documents",
    "load_source",
    "next_token_targets",
    "pack_documents",
    "train_tokenizer",
    "unigram_perplexity",
]
