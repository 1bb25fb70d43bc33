"""Document sources: Python's own documentation, local files, or a prepared tfds dataset.

Every source returns documents in a deterministic order, so the document index (which decides the
train/eval split) means the same thing on every host and every run. Cleaning is not done here:
the pipeline applies it with the config's flags, so a source is read the same way whatever the
cleaning settings.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
import platform
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

# Passages shorter than this are merged with the next paragraph: single paragraphs of docs are
# often one line ("Changed in version 3.3."), too short to be documents of their own.
MIN_PASSAGE_CHARS = 800
# A newline followed by whitespace-only lines; the next paragraph keeps its indentation.
_BLANK_LINE_RE = re.compile(r"\n(?:[ \t]*\n)+")


@dataclasses.dataclass(frozen=True)
class Document:
    """One unit of text; the train/eval split and the packing treat it as indivisible."""

    text: str
    label: str  # Where it came from: pydoc topic, file stem, tfds label or name.


def split_paragraphs(text: str) -> list[str]:
    """Splits at blank lines; keeps each paragraph's indentation (code blocks), drops empties."""
    text = text.replace("\r\n", "\n")
    return [p.rstrip() for p in _BLANK_LINE_RE.split(text) if p.strip()]


def group_passages(paragraphs: Sequence[str], min_chars: int = MIN_PASSAGE_CHARS) -> list[str]:
    """Groups consecutive paragraphs greedily into passages of at least `min_chars` characters.

    A too-short remainder at the end is appended to the previous passage rather than left as a
    stub; a text shorter than `min_chars` altogether stays one passage.
    """
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for paragraph in paragraphs:
        size += len(paragraph) + (2 if current else 0)  # The length once joined by "\n\n".
        current.append(paragraph)
        if size >= min_chars:
            passages.append("\n\n".join(current))
            current, size = [], 0
    if current:
        if passages:
            passages[-1] = "\n\n".join([passages[-1], *current])
        else:
            passages.append("\n\n".join(current))
    return passages


def pydoc_documents() -> list[Document]:
    """Passages of `pydoc_data.topics`, topics in sorted order (dict order is no contract)."""
    from pydoc_data.topics import topics

    return [
        Document(passage, name)
        for name in sorted(topics)
        for passage in group_passages(split_paragraphs(topics[name]))
    ]


def expand_paths(paths: str | Sequence[str], field: str = "data.paths") -> list[pathlib.Path]:
    """Files named by `paths` (files, directories of .txt/.jsonl, or globs), sorted per entry.

    Raises:
      FileNotFoundError: naming `field`, when an entry matches no file: a typo must not silently
        drop part of a corpus.
    """
    entries = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not entries:
        raise FileNotFoundError(f"{field}: no paths given")
    found: dict[pathlib.Path, None] = {}  # Ordered set: a file named twice is read once.
    for entry in entries:
        entry = os.path.expanduser(str(entry))
        if os.path.isdir(entry):
            matches = [
                str(p) for p in pathlib.Path(entry).rglob("*") if p.suffix in (".txt", ".jsonl")
            ]
        elif glob.has_magic(entry):
            matches = glob.glob(entry, recursive=True)
        else:
            matches = [entry] if os.path.isfile(entry) else []
        matches = sorted(m for m in matches if os.path.isfile(m))
        if not matches:
            raise FileNotFoundError(
                f"{field}={tuple(entries)!r}: {entry!r} matches no file (cwd {os.getcwd()})"
            )
        found.update(dict.fromkeys(pathlib.Path(m) for m in matches))
    return list(found)


def read_file_documents(path: str | os.PathLike, text_key: str = "text") -> Iterator[Document]:
    """Documents of one .txt file (passages of paragraphs) or .jsonl file (one per line)."""
    path = pathlib.Path(path)
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace")
        for passage in group_passages(split_paragraphs(text)):
            yield Document(passage, path.stem)
    elif path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line_number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if text_key not in record:
                    raise KeyError(
                        f"data.text_key={text_key!r}: missing in {path}:{line_number} "
                        f"(fields: {sorted(record)})"
                    )
                label = record.get("label", path.stem)
                yield Document(str(record[text_key]), str(label))
    else:
        raise ValueError(f"{path}: unsupported file type {path.suffix!r} (use .txt or .jsonl)")


def _capped(documents: Iterable[Document], max_documents: int) -> list[Document]:
    out = []
    for doc in documents:
        if max_documents and len(out) >= max_documents:
            break
        out.append(doc)
    return out


def _decode(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if hasattr(value, "item"):  # numpy scalars (tfds returns np.bytes_ / np.int64).
        return _decode(value.item())
    return str(value)


def tfds_documents(
    name: str, split: str, data_dir: str | None, text_key: str, max_documents: int = 0
) -> list[Document]:
    """Records of a prepared tfds dataset, read by index from its ArrayRecord files.

    `download=False`: nothing is downloaded at run time; prepare the dataset beforehand (e.g.
    with `build_local_tfds` or `tfds build --file_format=array_record`).
    """
    import tensorflow_datasets as tfds  # Slow import (~2 s): only for this source.

    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
    count = len(source) if not max_documents else min(len(source), max_documents)
    documents = []
    for index in range(count):
        record = source[index]
        if text_key not in record:
            raise KeyError(
                f"data.text_key={text_key!r}: not a feature of tfds {name!r} (has {sorted(record)})"
            )
        label = record["label"] if "label" in record else name
        documents.append(Document(_decode(record[text_key]), _decode(label)))
    return documents


def load_source(data_cfg: Any) -> tuple[list[Document], str]:
    """The documents of `data_cfg.source` (capped at data.max_documents) and a description."""
    cap = int(data_cfg.max_documents)
    unit = "documents"
    if data_cfg.source == "pydoc":
        docs = _capped(pydoc_documents(), cap)
        what, unit = f"pydoc_data.topics (Python {platform.python_version()})", "passages"
    elif data_cfg.source == "files":
        files = expand_paths(data_cfg.paths)
        docs = _capped(
            (doc for f in files for doc in read_file_documents(f, data_cfg.text_key)), cap
        )
        shown = ", ".join(str(f) for f in files[:3]) + (", ..." if len(files) > 3 else "")
        what = f"{len(files)} files ({shown})"
    elif data_cfg.source == "tfds":
        data_dir = data_cfg.tfds_data_dir or None
        docs = tfds_documents(
            data_cfg.tfds_name, data_cfg.tfds_split, data_dir, data_cfg.text_key, cap
        )
        what = f"tfds {data_cfg.tfds_name}[{data_cfg.tfds_split}]" + (
            f" in {data_dir}" if data_dir else ""
        )
    else:
        raise ValueError(f"data.source: unknown source {data_cfg.source!r}")
    if not docs:
        raise ValueError(f"data.source={data_cfg.source!r}: no documents ({what})")
    return docs, f"{what}, {len(docs)} {unit}"


def load_documents(data_cfg: Any) -> list[Document]:
    """The documents of `data_cfg.source`, uncleaned, in a deterministic order."""
    return load_source(data_cfg)[0]
