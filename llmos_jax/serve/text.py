"""Token ids -> text for streaming: incremental detokenization, stop strings, token strings."""

from __future__ import annotations

import functools

SPACE = "\u2581"  # SentencePiece's word-boundary mark


def decode(tokenizer, ids: list[int]) -> str:
    """tokenizer.decode, skipping ids beyond the tokenizer's vocabulary: a model's vocabulary
    is often padded past its tokenizer's (and random weights sample anything), and those ids
    have no text, where SentencePiece would raise."""
    n = tokenizer.vocab_size
    return tokenizer.decode([i for i in ids if 0 <= i < n])


class Detokenizer:
    """The text of a growing completion, handed out in pieces that never need taking back.

    Each step decodes the whole completion behind a few prompt tokens of context (SentencePiece
    drops the leading space of a text's first word, so decoding the completion alone would lose
    it) and hands out what is new, holding back (1) a trailing U+FFFD, an incomplete UTF-8
    character whose next byte-token is still to come, and (2) a suffix that could be the start
    of a stop string. When a stop string appears the text is cut just before it.
    """

    def __init__(self, tokenizer, context: list[int], stop: tuple[str, ...] = ()):
        self._tok = tokenizer
        self._context = list(context)
        self._prefix = decode(tokenizer, self._context)
        self._ids: list[int] = []
        self._stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self._stop), default=0)
        self._text = ""
        self._sent = 0

    def add(self, token: int) -> tuple[str, bool]:
        """Appends a token; returns (text to send now, whether a stop string ended the text)."""
        self._ids.append(token)
        full = decode(self._tok, self._context + self._ids)
        text = full[len(self._prefix) :] if full.startswith(self._prefix) else full
        self._text = text
        if self._stop:
            start = max(0, self._sent - self._longest)
            hits = [i for i in (text.find(s, start) for s in self._stop) if i >= 0]
            if hits:
                cut = max(min(hits), self._sent)
                self._text = text[:cut]
                return self._take(cut), True
        end = len(text)
        while end > self._sent and text[end - 1] == "\ufffd":
            end -= 1
        end = min(end, len(text) - self._partial_stop(text))
        return self._take(end), False

    def flush(self) -> str:
        """Everything held back (the completion ended for another reason)."""
        return self._take(len(self._text))

    def _take(self, end: int) -> str:
        if end <= self._sent:
            return ""
        out, self._sent = self._text[self._sent : end], end
        return out

    def _partial_stop(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of a stop string."""
        for k in range(min(self._longest - 1, len(text)), 0, -1):
            if any(s.startswith(text[-k:]) for s in self._stop):
                return k
        return 0


@functools.lru_cache(maxsize=1 << 16)
def _token_text(tokenizer, token_id: int) -> str:
    if not 0 <= token_id < tokenizer.vocab_size:  # the model's vocabulary can be the larger
        return f"<id:{token_id}>"
    piece = tokenizer.id_to_piece(token_id) if hasattr(tokenizer, "id_to_piece") else None
    if piece is None:
        return f"<id:{token_id}>"
    if SPACE in piece:  # SentencePiece / Metaspace vocabularies: the mark stands for a space
        return piece.replace(SPACE, " ")
    return tokenizer.decode([token_id]) or piece  # byte-level BPE, byte pieces; specials: piece


def token_text(tokenizer, token_id: int) -> str:
    """A token's own text as logprobs report it (" the", "\\n", "</s>"), independent of context."""
    return _token_text(tokenizer, int(token_id))
