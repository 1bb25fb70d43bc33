"""SentencePiece tokenizer: trained in memory, deterministic, exact round trip.

Training choices and why:

* ids pad=0, unk=1, bos=2, eos=3: fixed, so padding is 0 everywhere (packing, eval batches).
* normalization_rule_name="identity", remove_extra_whitespaces=False: the text is already cleaned
  (NFKC, tidy whitespace) by the pipeline, and any SentencePiece normalisation would break
  `decode(encode(x)) == x`. Newlines are ordinary characters.
* byte_fallback=True, character_coverage=1.0: characters never seen in training encode as UTF-8
  byte pieces instead of <unk>, so any text round-trips. It needs 256 byte pieces plus one per
  distinct training character; for smaller vocabularies it is turned off (logged) and unseen
  characters become <unk>.
* hard_vocab_limit=False: a small corpus yields fewer pieces than asked for instead of an error;
  `Tokenizer.vocab_size` is the real size (never above the requested one).
* num_threads is a fixed constant: measured, the trained model differs between 1, 2 and 4
  threads (deterministic for a fixed count), so tying it to the host's cores would make the
  tokenizer depend on the machine.
* Training sentences are paragraphs (split at blank lines); a paragraph longer than
  `max_sentence_length` bytes is split further at line breaks rather than silently skipped.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
TRAIN_THREADS = 4
MAX_SENTENCE_BYTES = 1 << 16

log = logging.getLogger(__name__)


class Tokenizer:
    """A SentencePiece model with the project's fixed special ids (pad 0, unk 1, bos 2, eos 3)."""

    def __init__(self, model_proto: bytes):
        self._proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise ValueError(
                f"tokenizer: special ids (pad, unk, bos, eos) are {ids}, expected "
                f"{(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}; train it with train_tokenizer"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.vocab_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def sha256(self) -> str:
        """Hex digest of the serialized model: identifies the tokenizer in fingerprints."""
        return hashlib.sha256(self._proto).hexdigest()

    @property
    def model_proto(self) -> bytes:
        return self._proto

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without bos/eos."""
        return self._sp.encode(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = -1) -> list[list[int]]:
        """`encode` over many texts; SentencePiece runs the batch on its own threads."""
        return self._sp.encode(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad, bos and eos are skipped wherever they occur (nothing stops early)."""
        return self._sp.decode([int(i) for i in ids if int(i) not in (PAD_ID, BOS_ID, EOS_ID)])

    def id_to_piece(self, token_id: int) -> str:
        return self._sp.id_to_piece(int(token_id))

    def save(self, path: str | os.PathLike) -> None:
        """Writes the model atomically (hosts sharing a workdir may write the same file)."""
        from etils import epath  # Also handles gs:// workdirs.

        from llmos_jax.provenance import write_atomic

        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self._proto)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        from etils import epath

        return cls(epath.Path(path).read_bytes())

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def _training_sentences(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for paragraph in text.split("\n\n"):
            if not paragraph.strip():
                continue
            if len(paragraph.encode("utf-8")) <= MAX_SENTENCE_BYTES:
                yield paragraph
            else:
                for line in paragraph.split("\n"):
                    # A single huge line is cut into chunks; a piece never spans a chunk edge.
                    while line:
                        yield line[: MAX_SENTENCE_BYTES // 4]
                        line = line[MAX_SENTENCE_BYTES // 4 :]


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    model_type: str = "bpe",
    user_defined_symbols: Sequence[str] = (),
) -> Tokenizer:
    """Trains a SentencePiece model in memory; the same inputs give the same bytes.

    Args:
      texts: Training documents (already cleaned).
      vocab_size: Pieces wanted, specials and byte pieces included (an upper bound, see above).
      model_type: "bpe" or "unigram".
      user_defined_symbols: Extra pieces always kept whole (e.g. "<mask>").
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"data.tokenizer.type: unknown model type {model_type!r}")
    sentences = list(_training_sentences(texts))
    if not sentences:
        raise ValueError("train_tokenizer: no training text")
    chars: set[str] = set()
    for sentence in sentences:
        chars.update(sentence)
    needed = 4 + len(user_defined_symbols) + len(chars) + 256
    byte_fallback = vocab_size >= needed
    if not byte_fallback:
        log.warning(
            "tokenizer: vocab_size=%d < %d (4 specials + %d symbols + %d characters + 256 bytes): "
            "byte_fallback off, unseen characters will map to <unk>",
            vocab_size,
            needed,
            len(user_defined_symbols),
            len(chars),
        )
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        pad_id=PAD_ID,
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        user_defined_symbols=list(user_defined_symbols),
        byte_fallback=byte_fallback,
        character_coverage=1.0,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        hard_vocab_limit=False,
        max_sentence_length=MAX_SENTENCE_BYTES,
        num_threads=TRAIN_THREADS,
        minloglevel=2,  # SentencePiece logs every EM round to stderr otherwise.
    )
    tokenizer = Tokenizer(model.getvalue())
    if tokenizer.vocab_size < vocab_size:
        log.warning(
            "tokenizer: the corpus supports only %d of the %d pieces asked for",
            tokenizer.vocab_size,
            vocab_size,
        )
    return tokenizer
