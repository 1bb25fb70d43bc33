"""Hugging Face interop: GPT-2 / Llama model directories and tokenizers.

* `hf_config`: config.json <-> `config.model`; `UnsupportedModelError` names the HF field.
* `hf`: safetensors <-> params (`load_hf_params`, `params_to_hf`, `save_hf_model`); also
  re-exports `hf_config`'s names.
* `tokenizers`: `load_tokenizer` for llmos / foreign SentencePiece models and tokenizer.json.
* `convert`: whole directories (`import_hf`, `export_hf`), as `llmos convert` runs them.
* `data`: held-out rows tokenized by a foreign tokenizer, for `llmos eval`.
"""

from llmos_jax.interop import hf
from llmos_jax.interop.convert import export_hf, import_hf, place_params
from llmos_jax.interop.data import tokenized_splits
from llmos_jax.interop.hf import (
    UnsupportedModelError,
    config_from_hf,
    hf_config_from,
    is_hf_model_dir,
    load_hf_params,
    params_to_hf,
    save_hf_model,
)
from llmos_jax.interop.tokenizers import (
    HFTokenizer,
    SentencePieceTokenizer,
    TextTokenizer,
    load_tokenizer,
)

__all__ = [
    "HFTokenizer",
    "SentencePieceTokenizer",
    "TextTokenizer",
    "UnsupportedModelError",
    "config_from_hf",
    "export_hf",
    "hf",
    "hf_config_from",
    "import_hf",
    "is_hf_model_dir",
    "load_hf_params",
    "load_tokenizer",
    "params_to_hf",
    "place_params",
    "save_hf_model",
    "tokenized_splits",
]
