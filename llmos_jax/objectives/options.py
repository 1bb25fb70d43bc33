"""An objective's own config fields and reserved tokens, checked when its factory runs.

The factory runs before anything compiles, so a missing or invalid `objective.*` field costs a
second; every error is a ConfigError that starts with the field's dotted name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmos_jax.config import ConfigError
from llmos_jax.data.tokenizer import EOS_ID

# SentencePiece gives data.tokenizer.user_defined_symbols the ids right after pad, unk, bos, eos.
FIRST_USER_ID = EOS_ID + 1


def option(config, name: str, ok: Callable[[Any], bool] | None = None, rule: str = "") -> Any:
    """config.objective.<name>, which must exist (and satisfy `ok`, else `rule` is the error)."""
    o = config.objective
    if name not in o:
        raise ConfigError(
            f"objective.{name}: objective {o.name!r} needs it (see configs/{o.name}/tiny.py)"
        )
    if ok is not None and not ok(o[name]):
        raise ConfigError(f"objective.{name}: {rule}, got {o[name]!r}")
    return o[name]


def require_arch(config, arch: str) -> None:
    if config.model.arch != arch:
        raise ConfigError(
            f"model.arch: objective {config.objective.name!r} needs {arch!r}, "
            f"got {config.model.arch!r}"
        )


def reserved_ids(config, symbols: Sequence[str], tokenizer=None) -> list[int]:
    """Ids of pieces reserved in data.tokenizer.user_defined_symbols (e.g. "<mask>").

    With the tokenizer at hand, each id is checked against its piece, which catches a
    data.tokenizer.path trained with other symbols.
    """
    defined = tuple(config.data.tokenizer.user_defined_symbols)
    ids = []
    for symbol in symbols:
        if symbol not in defined:
            raise ConfigError(
                f"data.tokenizer.user_defined_symbols: objective {config.objective.name!r} needs "
                f"{symbol!r} reserved in the tokenizer"
            )
        token_id = FIRST_USER_ID + defined.index(symbol)
        if tokenizer is not None and tokenizer.id_to_piece(token_id) != symbol:
            raise ConfigError(
                f"data.tokenizer.path: piece {token_id} is {tokenizer.id_to_piece(token_id)!r}, "
                f"not {symbol!r}; train the tokenizer with data.tokenizer.user_defined_symbols"
            )
        ids.append(token_id)
    return ids


def ordinary_ids(config, tokenizer=None) -> tuple[int, int]:
    """[low, high): the ids of ordinary pieces, past the specials and the reserved symbols."""
    high = tokenizer.vocab_size if tokenizer is not None else int(config.model.vocab_size)
    return FIRST_USER_ID + len(config.data.tokenizer.user_defined_symbols), high
