"""Document sources: pydoc passages, .txt/.jsonl files, and the offline tfds round trip."""

import json
from pydoc_data.topics import topics

import pytest

from llmos_jax.config import base_config
from llmos_jax.data import load_documents
from llmos_jax.data.sources import MIN_PASSAGE_CHARS, load_source


def data_cfg(**overrides):
    cfg = base_config().data
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def test_pydoc_passages_cover_every_topic_in_sorted_order():
    docs, description = load_source(data_cfg())
    labels = [d.label for d in docs]
    assert labels == sorted(labels) and set(labels) == set(topics)
    assert description.startswith("pydoc_data.topics (Python 3.") and f"{len(docs)} passages" in (
        description
    )
    # Passages are long enough unless their whole topic is short, and lose no words.
    for name in topics:
        passages = [d.text for d in docs if d.label == name]
        assert " ".join(" ".join(passages).split()) == " ".join(topics[name].split())
        assert all(len(p) >= MIN_PASSAGE_CHARS for p in passages) or len(passages) == 1


def test_max_documents_caps():
    assert len(load_documents(data_cfg(max_documents=5))) == 5


def test_txt_files_are_grouped_paragraphs(tmp_path):
    paragraphs = [f"Paragraph {i} " + "x" * 490 for i in range(5)]  # ~500 characters each.
    (tmp_path / "book.txt").write_text("\n\n\n".join(paragraphs) + "\n")
    docs = load_documents(data_cfg(source="files", paths=(str(tmp_path / "*.txt"),)))
    # Greedy to >= 800 characters: [0, 1], [2, 3]; the short remainder [4] joins the last one.
    assert [d.text for d in docs] == ["\n\n".join(paragraphs[:2]), "\n\n".join(paragraphs[2:])]
    assert {d.label for d in docs} == {"book"}


def test_jsonl_one_document_per_line(tmp_path):
    records = [{"body": "first doc", "label": "news"}, {"body": "second doc"}, {"body": "third"}]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    (tmp_path / "more.txt").write_text("a text file")
    cfg = data_cfg(source="files", paths=(str(path), str(tmp_path / "more.txt")), text_key="body")
    docs = load_documents(cfg)
    assert [(d.text, d.label) for d in docs] == [
        ("first doc", "news"),
        ("second doc", "corpus"),
        ("third", "corpus"),
        ("a text file", "more"),
    ]
    with pytest.raises(KeyError, match="data.text_key='text'"):
        load_documents(data_cfg(source="files", paths=(str(path),)))


def test_missing_paths_error_names_the_field(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    paths = (str(tmp_path / "ok.txt"), str(tmp_path / "typo*.txt"))
    with pytest.raises(FileNotFoundError, match=r"data\.paths=.*typo\*\.txt"):
        load_documents(data_cfg(source="files", paths=paths))


def test_local_tfds_round_trip(tmp_path):
    from llmos_jax.data import build_local_tfds

    (tmp_path / "a.txt").write_text("Alpha paragraph one.\n\nAlpha paragraph two.\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"text": "Beta ünïcode doc", "label": "beta"})
        + "\n"
        + json.dumps({"text": "Gamma doc"})
        + "\n"
    )
    paths = (str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl"))
    build_local_tfds(paths, tmp_path / "tfds", name="tiny_corpus")
    from_tfds = load_source(
        data_cfg(source="tfds", tfds_name="tiny_corpus", tfds_data_dir=str(tmp_path / "tfds"))
    )
    assert [(d.text, d.label) for d in from_tfds[0]] == [
        ("Alpha paragraph one.\n\nAlpha paragraph two.", "a"),
        ("Beta ünïcode doc", "beta"),
        ("Gamma doc", "b"),
    ]
    assert "tfds tiny_corpus[train]" in from_tfds[1]
    assert from_tfds[0] == load_documents(data_cfg(source="files", paths=paths))
    capped = data_cfg(source="tfds", tfds_name="tiny_corpus", tfds_data_dir=str(tmp_path / "tfds"))
    capped.max_documents = 2
    assert len(load_documents(capped)) == 2
