"""A tfds builder for local .txt/.jsonl files, so the `data.source=tfds` path runs offline.

`build_local_tfds(paths, data_dir, name="my_corpus")` writes `data_dir/my_corpus/1.0.0/` as
ArrayRecord files (random access, no TensorFlow needed); afterwards
`data.source=tfds data.tfds_name=my_corpus data.tfds_data_dir=data_dir` reads it back through
`tfds.data_source`, exactly as it would read a dataset prepared by `tfds build`.

The builder is never registered with tfds (the name is chosen per call); the reader finds the
prepared files through `dataset_info.json` in the data directory, which tfds supports for
unregistered names. Documents are split exactly as `data.source=files` splits them.
"""

from __future__ import annotations

import os
import re
import types
from collections.abc import Sequence

import tensorflow_datasets as tfds

from llmos_jax.data.sources import expand_paths, read_file_documents

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class LocalTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Local text files as a tfds dataset with features `text` and `label` and one split, train.

    Subclassed per dataset name by `build_local_tfds` (tfds takes the directory name from the
    class attribute `name`).
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Local .txt/.jsonl files."}
    # No checksums file to find. tfds' own lookup of the builder's source file (via
    # importlib_resources, not a dependency we have) fails for builders inside a package.
    code_path = None

    def __init__(self, *, paths: Sequence[str] = (), text_key: str = "text", **kwargs):
        self._paths = tuple(str(p) for p in ([paths] if isinstance(paths, str) else paths))
        self._text_key = text_key
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly: `self.dataset_info_from_configs` looks for metadata files next to a
        # registered builder's module, which this builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"Local text files: {', '.join(self._paths)}",
            features=tfds.features.FeaturesDict(
                {"text": tfds.features.Text(), "label": tfds.features.Text()}
            ),
            # Keep file order: tfds otherwise shuffles examples by a hash of their key.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # Nothing is downloaded.
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        files = expand_paths(self._paths, field="paths")
        for file_index, path in enumerate(files):
            for doc_index, doc in enumerate(read_file_documents(path, self._text_key)):
                # Keys sort in file order, which `disable_shuffling` preserves.
                yield f"{file_index:06d}-{doc_index:010d}", {"text": doc.text, "label": doc.label}


def build_local_tfds(
    paths: str | Sequence[str],
    data_dir: str | os.PathLike,
    name: str = "local_text",
    text_key: str = "text",
) -> tfds.core.DatasetBuilder:
    """Prepares local files as the ArrayRecord tfds dataset `name` under `data_dir`.

    Args:
      paths: .txt / .jsonl files, directories or globs (as for data.source=files).
      data_dir: Where to write; becomes data.tfds_data_dir.
      name: The dataset name (snake_case); becomes data.tfds_name.
      text_key: The field holding the text in .jsonl records.

    Returns:
      The prepared builder (its `data_dir` holds the files). Preparing an existing dataset again
      is a no-op: tfds keeps prepared versions, so delete the directory to rebuild.
    """
    if not _NAME_RE.match(name):
        raise ValueError(f"name={name!r}: tfds names are snake_case ([a-z][a-z0-9_]*)")
    cls = types.new_class(
        f"LocalText_{name}",
        (LocalTextBuilder,),
        {"skip_registration": True},
        lambda ns: ns.update(name=name, __module__=__name__),
    )
    builder = cls(
        paths=paths, text_key=text_key, data_dir=os.fspath(data_dir), file_format="array_record"
    )
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    return builder
