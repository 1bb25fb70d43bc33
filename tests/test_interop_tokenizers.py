"""Tokenizers behind one interface, against transformers' own tokenizers (tokenizer.json) and
SentencePiece itself (.model files)."""

import io

import pytest
import sentencepiece as spm

from llmos_jax.data import Tokenizer, train_tokenizer
from llmos_jax.interop import HFTokenizer, SentencePieceTokenizer, load_tokenizer
from tests import hf_reference as ref

SAMPLES = [
    "The for statement is used to iterate.",
    "  leading spaces,\ttabs and\nnew lines\n\n",
    "Unicode: café, naïve, 日本語, emoji 🙂",
    "",
]


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_tokenizer_json_matches_transformers(tmp_path, kind):
    save = ref.save_gpt2_tokenizer if kind == "gpt2" else ref.save_llama_tokenizer
    save(tmp_path)
    theirs = ref.auto_tokenizer(tmp_path)
    ours = load_tokenizer(tmp_path)
    assert isinstance(ours, HFTokenizer)
    assert ours.vocab_size == len(theirs)
    assert (ours.bos_id, ours.eos_id) == (theirs.bos_token_id, theirs.eos_token_id)
    assert ours.pad_id == ours.eos_id  # neither defines a pad token: eos stands in
    for text in SAMPLES:
        ids = ours.encode(text)
        assert ids == theirs.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == theirs.decode(ids), text
    # bos / eos / pad are skipped by decode, as llmos_jax.data.Tokenizer does.
    ids = ours.encode(SAMPLES[0])
    assert ours.decode([ours.bos_id, *ids, ours.eos_id]) == theirs.decode(ids)
    assert ours.encode_batch(SAMPLES) == [ours.encode(t) for t in SAMPLES]


def test_gpt2_ids_come_from_its_endoftext_token(tmp_path):
    ref.save_gpt2_tokenizer(tmp_path)
    tok = load_tokenizer(tmp_path / "tokenizer.json")
    assert tok.id_to_piece(tok.eos_id) == "<|endoftext|>" and tok.bos_id == tok.eos_id


def _sentencepiece_model(**ids) -> bytes:
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(ref.TEXT.split(". ") * 3),
        model_writer=out,
        vocab_size=90,
        model_type="bpe",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
        **ids,
    )
    return out.getvalue()


def test_foreign_sentencepiece_model_keeps_its_own_ids(tmp_path):
    # Llama's convention: unk 0, bos 1, eos 2, no pad.
    proto = _sentencepiece_model(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    (tmp_path / "tokenizer.model").write_bytes(proto)
    tok = load_tokenizer(tmp_path)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.unk_id, tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2, 2)
    sp = spm.SentencePieceProcessor(model_proto=proto)
    assert tok.vocab_size == sp.vocab_size()
    for text in SAMPLES:
        assert tok.encode(text) == sp.encode(text)
        assert tok.decode([1, *tok.encode(text), 2]) == sp.decode(sp.encode(text))


def test_llmos_sentencepiece_model_loads_as_the_project_tokenizer(tmp_path):
    train_tokenizer([ref.TEXT] * 3, 80).save(tmp_path / "tokenizer.model")
    assert isinstance(load_tokenizer(tmp_path), Tokenizer)
    assert isinstance(load_tokenizer(tmp_path / "tokenizer.model"), Tokenizer)


def test_tokenizer_json_wins_over_tokenizer_model(tmp_path):
    # Llama repositories often ship both; transformers uses tokenizer.json.
    ref.save_llama_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(_sentencepiece_model(unk_id=0, bos_id=1, eos_id=2))
    assert isinstance(load_tokenizer(tmp_path), HFTokenizer)


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_tokenizer(tmp_path)
