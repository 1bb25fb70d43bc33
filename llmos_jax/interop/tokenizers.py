"""Tokenizers behind one interface: the project's SentencePiece model, any SentencePiece model,
and Hugging Face `tokenizer.json` (through the `tokenizers` package).

All of them offer what `llmos_jax.data.Tokenizer` does for sampling and evaluation: `encode`
(ids without bos/eos), `encode_batch`, `decode` (pad, bos and eos skipped), `bos_id`, `eos_id`,
`pad_id`, `unk_id`, `vocab_size`, `sha256`. A SentencePiece model trained by llmos (fixed ids pad 0,
unk 1, bos 2, eos 3) loads as the project's own class, so the data pipeline keeps accepting it.

Special ids of foreign tokenizers come from, in order: tokenizer_config.json, then
special_tokens_map.json (tokens, looked up in the vocabulary), then generation_config.json and
config.json (ids). A missing bos falls back to eos (GPT-2 uses <|endoftext|> for both) and a
missing pad to eos: padding is always masked, so any valid id will do.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from etils import epath

from llmos_jax.data import Tokenizer

TOKENIZER_JSON = "tokenizer.json"
SENTENCEPIECE_MODEL = "tokenizer.model"
# Everything a Hugging Face tokenizer may consist of; copied verbatim on import and export.
TOKENIZER_FILES = (
    TOKENIZER_JSON,
    SENTENCEPIECE_MODEL,
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
)
_ROLES = ("bos", "eos", "pad", "unk")


class TextTokenizer(Protocol):
    """What sampling and evaluation need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int: ...
    @property
    def eos_id(self) -> int: ...
    @property
    def pad_id(self) -> int: ...
    def encode(self, text: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...


def _read_json(directory: epath.Path, name: str) -> dict[str, Any]:
    path = directory / name
    return json.loads(path.read_text()) if path.exists() else {}


def _special_ids(directory: epath.Path, token_to_id: Callable[[str], int | None]) -> dict:
    """{role: id or None} for bos/eos/pad/unk from the files next to a tokenizer."""
    ids: dict[str, int | None] = dict.fromkeys(_ROLES)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        cfg = _read_json(directory, name)
        for role in _ROLES:
            token = cfg.get(f"{role}_token")
            if isinstance(token, dict):  # serialized AddedToken
                token = token.get("content")
            if ids[role] is None and isinstance(token, str):
                ids[role] = token_to_id(token)
    for name in ("generation_config.json", "config.json"):
        cfg = _read_json(directory, name)
        for role in _ROLES:
            value = cfg.get(f"{role}_token_id")
            if isinstance(value, list):  # several stop ids: the first is the canonical one
                value = value[0] if value else None
            if ids[role] is None and isinstance(value, int):
                ids[role] = value
    return ids


def _resolve(ids: dict[str, int | None], origin: str) -> dict[str, int]:
    if ids["eos"] is None:
        raise ValueError(f"{origin}: no eos token found (tokenizer_config.json or config.json)")
    return {
        "bos": ids["bos"] if ids["bos"] is not None else ids["eos"],
        "eos": ids["eos"],
        "pad": ids["pad"] if ids["pad"] is not None else ids["eos"],
        "unk": ids["unk"] if ids["unk"] is not None else -1,
    }


class _Specials:
    """The special-id properties shared by the foreign tokenizers."""

    _ids: dict[str, int]
    _digest: str

    @property
    def bos_id(self) -> int:
        return self._ids["bos"]

    @property
    def eos_id(self) -> int:
        return self._ids["eos"]

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def unk_id(self) -> int:
        return self._ids["unk"]

    @property
    def sha256(self) -> str:
        return self._digest

    def _strip(self, ids: Iterable[int]) -> list[int]:
        skip = (self.pad_id, self.bos_id, self.eos_id)
        return [int(i) for i in ids if int(i) not in skip]


# transformers' `clean_up_tokenization` (applied when tokenizer_config.json asks for it).
_CLEANUP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"))
_CLEANUP += ((" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


class HFTokenizer(_Specials):
    """A Hugging Face `tokenizer.json`, run by the `tokenizers` package (no transformers).

    The file is run as written: adjustments transformers makes at load time from
    tokenizer_config.json (e.g. `add_prefix_space`, Llama's `legacy`) are not re-applied.
    """

    def __init__(self, tokenizer_json: str, specials_dir: str | os.PathLike | None = None):
        """specials_dir: the directory whose config files name the special tokens."""
        from tokenizers import Tokenizer as RustTokenizer

        self._tok = RustTokenizer.from_str(tokenizer_json)
        d = epath.Path(specials_dir) if specials_dir is not None else None
        found = _special_ids(d, self._tok.token_to_id) if d else dict.fromkeys(_ROLES)
        self._ids = _resolve(found, str(d / TOKENIZER_JSON) if d else TOKENIZER_JSON)
        config = _read_json(d, "tokenizer_config.json") if d else {}
        self._cleanup = bool(config.get("clean_up_tokenization_spaces"))
        self._digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()

    @classmethod
    def from_dir(cls, directory: str | os.PathLike) -> HFTokenizer:
        return cls((epath.Path(directory) / TOKENIZER_JSON).read_text(), directory)

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos (the post-processor's specials are not added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        del num_threads  # tokenizers parallelises batches on its own pool
        return [e.ids for e in self._tok.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        text = self._tok.decode(self._strip(ids), skip_special_tokens=False)
        if self._cleanup:
            for before, after in _CLEANUP:
                text = text.replace(before, after)
        return text

    def id_to_piece(self, token_id: int) -> str:
        return self._tok.id_to_token(int(token_id))

    def __repr__(self) -> str:
        return f"HFTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


class SentencePieceTokenizer(_Specials):
    """Any SentencePiece model (e.g. Llama's tokenizer.model), with its own special ids."""

    def __init__(self, model_proto: bytes, ids: dict[str, int]):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_proto=bytes(model_proto))
        self._ids = ids
        self._digest = hashlib.sha256(bytes(model_proto)).hexdigest()

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> SentencePieceTokenizer:
        import sentencepiece as spm

        path = epath.Path(path)
        proto = path.read_bytes()
        sp = spm.SentencePieceProcessor(model_proto=proto)
        # The model's own ids (-1 = none) win; the HF files beside it fill the gaps.
        own = {r: getattr(sp, f"{r}_id")() for r in _ROLES}
        ids = {r: v if v >= 0 else None for r, v in own.items()}
        piece_id = lambda piece: (
            sp.piece_to_id(piece) if sp.piece_to_id(piece) != sp.unk_id() else None
        )
        for role, value in _special_ids(path.parent, piece_id).items():
            ids[role] = value if ids[role] is None else ids[role]
        return cls(proto, _resolve(ids, str(path)))

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        return self._sp.decode(self._strip(ids))

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def load_tokenizer(path: str | os.PathLike) -> TextTokenizer:
    """The tokenizer at `path`: a tokenizer.json or .model file, or a directory holding one.

    A directory's tokenizer.json wins over its tokenizer.model, as in transformers. A SentencePiece
    model with llmos' fixed special ids loads as `llmos_jax.data.Tokenizer`.
    """
    p = epath.Path(path)
    if p.is_dir():
        if (p / TOKENIZER_JSON).exists():
            return HFTokenizer.from_dir(p)
        if not (p / SENTENCEPIECE_MODEL).exists():
            raise FileNotFoundError(f"{p} holds no {TOKENIZER_JSON} or {SENTENCEPIECE_MODEL}")
        p = p / SENTENCEPIECE_MODEL
    if not p.exists():
        raise FileNotFoundError(f"no tokenizer at {p}")
    if p.name.endswith(".json"):
        if p.name != TOKENIZER_JSON:
            raise ValueError(f"{p}: a Hugging Face tokenizer file must be named {TOKENIZER_JSON}")
        return HFTokenizer.from_dir(p.parent)
    try:
        return Tokenizer.load(p)
    except ValueError:  # other special ids than llmos' own: a foreign SentencePiece model
        return SentencePieceTokenizer.from_file(p)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies whichever of TOKENIZER_FILES exist in `src` into `dst`; returns their names."""
    src, dst = epath.Path(src), epath.Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            (dst / name).write_bytes((src / name).read_bytes())
            copied.append(name)
    return copied
