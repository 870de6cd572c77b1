"""Raw text documents from the embedded corpus, a Hub dataset or local files, split train / held-out.

`load_text_splits` is the one entry point. It returns two `datasets` objects (map-style
`Dataset`, or `IterableDataset` when streaming) whose only column is ``"text"``: one document per
row. The held-out documents never appear in the training split.

Sources (the ``dataset`` argument):

- ``"stdlib"`` (default): the Python standard library source, one file per document
  (`hf_wavepos.data.corpus`); needs no network.
- ``"text"``, ``"json"``, ``"parquet"`` with ``data_files``: local (or remote) files through the
  `datasets` builders of those names. Plain-text files are read one *file* per document
  (``sample_by="document"``), not one line per document. With ``data_files`` set and ``dataset``
  left at ``"stdlib"``, the builder is inferred from the file extension.
- anything else: a Hub dataset name or a local dataset folder, passed to `datasets.load_dataset`
  with ``dataset_config`` as its configuration name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import datasets

from hf_wavepos.data.corpus import STDLIB_NAME, iter_stdlib_documents, stdlib_files

FILE_BUILDERS = ("text", "json", "parquet")

_EXTENSION_BUILDERS = {
    ".txt": "text", ".text": "text", ".md": "text", ".py": "text",
    ".json": "json", ".jsonl": "json", ".ndjson": "json",
    ".parquet": "parquet", ".pq": "parquet",
}

@dataclass
class TextSplits:
    """Training and held-out documents, each with a single ``"text"`` column.

    Attributes:
        train: documents to train on.
        validation: held-out documents (disjoint from ``train``).
        description: one line saying where both came from (for logs).
        packed: True when both hold pre-packed blocks (``input_ids``, ``position_ids``) instead
            of text (`hf_wavepos.data.blocks`).
    """

    train: Any
    validation: Any
    description: str
    packed: bool = False


def infer_file_builder(data_files: str | Sequence[str] | Mapping[str, Any]) -> str:
    """The `datasets` builder ("text", "json" or "parquet") for files, from their extensions."""
    if isinstance(data_files, Mapping):
        names = [f for v in data_files.values() for f in ([v] if isinstance(v, str) else v)]
    else:
        names = [data_files] if isinstance(data_files, str) else list(data_files)
    builders = set()
    for name in names:
        stem = name[:-3] if name.endswith((".gz", ".xz")) else name[:-4] if name.endswith(".zst") else name
        suffix = "." + stem.rsplit(".", 1)[-1].lower() if "." in stem.rsplit("/", 1)[-1] else ""
        if suffix not in _EXTENSION_BUILDERS:
            raise ValueError(
                f"data_files: cannot tell the format of {name!r} from its extension; known extensions: "
                f"{', '.join(sorted(_EXTENSION_BUILDERS))}. Set data.dataset to one of {FILE_BUILDERS}."
            )
        builders.add(_EXTENSION_BUILDERS[suffix])
    if len(builders) != 1:
        raise ValueError(f"data_files mixes formats {sorted(builders)}; give files of one format.")
    return builders.pop()


def load_text_splits(
    dataset: str = STDLIB_NAME,
    *,
    dataset_config: str | None = None,
    data_files: str | Sequence[str] | Mapping[str, Any] | None = None,
    text_column: str = "text",
    train_split: str = "train",
    validation_split: str | None = None,
    validation_size: float | int = 0.01,
    streaming: bool = False,
    max_documents: int | None = None,
    seed: int = 0,
) -> TextSplits:
    """Load documents and split off held-out ones.

    Args:
        dataset: ``"stdlib"``, a file builder (``"text"``/``"json"``/``"parquet"``), a Hub name
            or a local dataset folder (see the module docstring).
        dataset_config: configuration name of a Hub dataset (e.g. ``"wikitext-103-raw-v1"``).
        data_files: file path(s) or glob(s), or a ``{split: files}`` mapping.
        text_column: the column holding the document text.
        train_split: split to train on.
        validation_split: split to hold out; None uses a ``"validation"`` split when the source
            has one, otherwise holds out ``validation_size`` documents of ``train_split``.
        validation_size: held-out share: a fraction in (0, 1) of the documents (map-style only),
            or a number of documents >= 1 (streaming takes the first ones).
        streaming: return `datasets.IterableDataset` objects that read lazily.
        max_documents: cap on the number of training documents (None: all).
        seed: order of the stdlib files and of the held-out draw.

    Returns:
        `TextSplits` whose datasets have exactly one column, ``"text"``.

    Raises:
        ValueError: a missing text column or split, a bad ``validation_size``, an unknown file type.
    """
    _check_validation_size(validation_size, streaming)
    if dataset == STDLIB_NAME and data_files is None:
        return _stdlib_splits(validation_size, streaming, max_documents, seed)

    builder = dataset
    if data_files is not None and dataset == STDLIB_NAME:
        builder = infer_file_builder(data_files)
    if builder in FILE_BUILDERS and data_files is None:
        raise ValueError(f"data.dataset={builder!r} reads local files: set data.data_files as well.")
    kwargs: dict[str, Any] = {"streaming": streaming}
    if data_files is not None:
        kwargs["data_files"] = data_files
    if builder == "text":
        kwargs["sample_by"] = "document"
    loaded = datasets.load_dataset(builder, dataset_config, **kwargs)
    source = f"{builder}" + (f" ({dataset_config})" if dataset_config else "") + (f" {data_files}" if data_files else "")

    train = _split(loaded, train_split, "train_split", source)
    train = _only_text(train, text_column, source)
    if validation_split is None and "validation" in loaded and train_split != "validation":
        validation_split = "validation"
    if validation_split is not None:
        validation = _only_text(_split(loaded, validation_split, "validation_split", source), text_column, source)
        held_out = f"split {validation_split!r}"
    elif streaming:
        validation, train = train.take(validation_size), train.skip(validation_size)
        held_out = f"the first {validation_size} documents of {train_split!r}"
    else:
        if len(train) < 2:
            raise ValueError(f"{source}: {len(train)} document(s) cannot be split into train and validation.")
        parts = train.train_test_split(test_size=validation_size, seed=seed, shuffle=True)
        train, validation = parts["train"], parts["test"]
        held_out = f"{len(validation)} documents of {train_split!r}"
    if max_documents is not None:
        train = train.take(max_documents) if streaming else train.select(range(min(max_documents, len(train))))
    return TextSplits(train, validation, f"{source}: train {train_split!r}, validation {held_out}")


def _check_validation_size(size: float | int, streaming: bool) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise ValueError(f"validation_size must be a number, got {size!r}.")
    if isinstance(size, float) and not 0.0 < size < 1.0:
        raise ValueError(f"validation_size={size} must be a fraction in (0, 1) or a whole number of documents.")
    if isinstance(size, int) and size < 1:
        raise ValueError(f"validation_size={size} must be >= 1 documents (or a fraction in (0, 1)).")
    if streaming and isinstance(size, float):
        raise ValueError(
            f"validation_size={size} is a fraction, but a streamed dataset has no length: give a number "
            "of documents (e.g. validation_size: 200) or set validation_split."
        )


def _stdlib_splits(validation_size: float | int, streaming: bool, max_documents: int | None, seed: int) -> TextSplits:
    files = stdlib_files(seed=seed)
    n_val = validation_size if isinstance(validation_size, int) else max(1, round(validation_size * len(files)))
    if n_val >= len(files):
        raise ValueError(f"validation_size={validation_size} leaves no training file of the {len(files)} stdlib files.")
    val_files, train_files = files[:n_val], files[n_val:]
    if max_documents is not None:
        train_files = train_files[:max_documents]

    def build(chosen):
        if streaming:  # read lazily, file by file
            ds = datasets.IterableDataset.from_generator(iter_stdlib_documents, gen_kwargs={"files": chosen})
        else:  # ~30 MB of text: held in memory, no cache files written
            ds = datasets.Dataset.from_list(list(iter_stdlib_documents(chosen)))
        return ds.select_columns(["text"])

    return TextSplits(
        build(train_files),
        build(val_files),
        f"stdlib ({len(train_files)} train / {len(val_files)} held-out files)",
    )


def _split(loaded: Any, name: str, field: str, source: str) -> Any:
    if isinstance(loaded, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if name not in loaded:
            raise ValueError(f"{source} has no split {name!r} ({field}); available splits: {', '.join(loaded)}.")
        return loaded[name]
    return loaded


def _only_text(ds: Any, text_column: str, source: str) -> Any:
    columns = ds.column_names
    example = None
    if columns is None:  # a streamed dataset without declared features: look at its first row
        example = next(iter(ds), None)
        if example is None:
            raise ValueError(f"{source} is empty.")
        columns = list(example)
    if text_column not in columns:
        raise ValueError(
            f"text_column={text_column!r} is not a column of {source}; available columns: {columns}. "
            "Set data.text_column to the column that holds the text."
        )
    feature = ds.features[text_column] if ds.features is not None else None
    is_text = (
        getattr(feature, "dtype", None) in ("string", "large_string")
        if feature is not None
        else isinstance((example or next(iter(ds)))[text_column], str)
    )
    if not is_text:
        raise ValueError(
            f"column {text_column!r} of {source} does not hold text ({feature or 'non-string values'}); "
            "set data.text_column to a string column."
        )
    ds = ds.select_columns([text_column])
    return ds.rename_column(text_column, "text") if text_column != "text" else ds
