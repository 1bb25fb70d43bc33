"""SentencePiece tokenizer: exact round trips, fixed special ids, deterministic training."""

import pytest

from llmos_jax.data import Tokenizer, clean_text, train_tokenizer
from llmos_jax.data.sources import pydoc_documents


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return [clean_text(d.text) for d in pydoc_documents()]


@pytest.fixture(scope="module")
def tokenizer(corpus) -> Tokenizer:
    return train_tokenizer(corpus, 1024, "bpe")


def test_special_ids_and_size(tokenizer):
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2, 3)
    assert tokenizer.vocab_size == 1024
    assert [tokenizer.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_round_trip_on_pydoc(tokenizer, corpus):
    ids = tokenizer.encode_batch(corpus)
    assert all(tokenizer.decode(i) == text for i, text in zip(ids, corpus, strict=True))
    # encode adds no bos/eos, and a 1024-piece BPE compresses English prose (> 2 chars a token).
    assert all(tokenizer.bos_id not in i and tokenizer.eos_id not in i for i in ids)
    assert sum(map(len, corpus)) / sum(map(len, ids)) > 2.0


@pytest.mark.parametrize(
    "text",
    [
        "héllo wörld",
        "日本語のテキスト",
        "emoji 🎉🚀 ok",
        "  two leading spaces",
        "tabs\tand\nnewlines\n",
    ],
)
def test_round_trip_unseen_characters(tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.unk_id not in ids  # byte fallback, not <unk>
    assert tokenizer.decode(ids) == text


def test_decode_skips_specials_anywhere(tokenizer):
    ids = tokenizer.encode("assert statement")
    noisy = [tokenizer.bos_id, *ids[:1], tokenizer.eos_id, *ids[1:], tokenizer.pad_id, 0]
    assert tokenizer.decode(noisy) == "assert statement"


def test_training_is_deterministic(corpus, tokenizer):
    again = train_tokenizer(corpus, 1024, "bpe")
    assert again.model_proto == tokenizer.model_proto and again.sha256 == tokenizer.sha256
    subset = corpus[:100]
    assert train_tokenizer(subset, 512, "unigram").model_proto == (
        train_tokenizer(subset, 512, "unigram").model_proto
    )


def test_save_load(tokenizer, tmp_path):
    path = tmp_path / "sub" / "tok.model"
    tokenizer.save(path)
    loaded = Tokenizer.load(path)
    assert loaded.sha256 == tokenizer.sha256
    assert loaded.encode("The assert statement") == tokenizer.encode("The assert statement")


def test_save_over_an_existing_file(tokenizer, tmp_path):
    # Hosts sharing a workdir each write the tokenizer they trained: the second must not fail.
    path = tmp_path / "tok.model"
    path.write_bytes(b"stale")
    tokenizer.save(path)
    tokenizer.save(path)
    assert Tokenizer.load(path).sha256 == tokenizer.sha256
    assert [p.name for p in tmp_path.iterdir()] == ["tok.model"]  # no temporary file left


def test_user_defined_symbols_and_small_corpus():
    texts = ["the cat sat on the mat <mask> today", "a dog <mask> barked at the cat"] * 5
    tok = train_tokenizer(texts, 1024, "unigram", user_defined_symbols=("<mask>",))
    # A tiny corpus cannot fill 1024 pieces: a smaller vocabulary instead of an error.
    assert 260 < tok.vocab_size < 1024
    mask_id = tok.encode("<mask>")
    assert len(mask_id) in (1, 2) and tok.id_to_piece(mask_id[-1]) == "<mask>"
    assert tok.decode(tok.encode(texts[0])) == texts[0]
