"""Where evaluation text comes from: the Python standard library, local files, or a Hub dataset.

`load_texts` is the one entry point. Sources, by the string given:

- ``"stdlib"``: every ``.py`` file of this interpreter's standard library, sorted by path, no
  ``site-packages`` (`hf_wavepos.data.corpus.stdlib_files` unshuffled). It is on every machine
  that runs Python, so it works offline.
- ``"stdlib-heldout:N"`` or ``"stdlib-heldout:N:SEED"``: the documents the training recipes hold
  out of the embedded corpus with ``data.validation_size: N`` and ``data.seed: SEED`` (default 0),
  via `hf_wavepos.data.load_text_splits`, so a model is scored on files it never saw.
- a path: a ``.jsonl`` file (one document per line, field ``text_column``), a ``.txt`` / ``.py`` /
  ``.md`` file (one document), or a folder (all such files below it, sorted).
- anything else: a Hugging Face Hub dataset name, loaded with ``datasets.load_dataset(name,
  config_name, split=split)`` and read from ``text_column`` (needs the network or a local cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

TEXT_SUFFIXES = (".txt", ".py", ".md", ".rst")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSON-lines file into a list of dicts (blank lines skipped).

    Raises:
        ValueError: a line is not a JSON object (the message names the line number).
    """
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}: line {number} is not a JSON object")
            records.append(record)
    return records


def write_jsonl(records: Iterable[dict], path: str | Path) -> Path:
    """Write dicts as JSON lines (UTF-8, no ASCII escaping); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def looks_like_path(source: str) -> bool:
    """True when ``source`` names a local file or folder (exists, or has a path-like shape)."""
    return Path(source).exists() or source.startswith((".", "/", "~")) or source.endswith((".jsonl", ".json", *TEXT_SUFFIXES))


def load_hub_dataset(name: str, config_name: str | None = None, split: str = "test"):
    """``datasets.load_dataset(name, config_name, split=split)`` with an actionable error.

    Raises:
        ValueError: the dataset cannot be loaded (offline, unknown name, wrong config or split).
    """
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("Hub datasets need `datasets`: pip install 'hf-wavepos[eval]'") from err
    try:
        return datasets.load_dataset(name, config_name, split=split)
    except Exception as err:  # datasets raises many types (offline, not found, bad split)
        raise ValueError(
            f"could not load the Hub dataset {name!r} (config {config_name!r}, split {split!r}): "
            f"{type(err).__name__}: {err}. Offline, pass a local .jsonl file or folder, or 'stdlib'."
        ) from err


def stdlib_heldout_texts(spec: str) -> list[str]:
    """Texts of ``"stdlib-heldout:N[:SEED]"``: the training recipes' held-out stdlib files.

    N is a count (``40``) or a fraction (``0.02``), as in ``data.validation_size``.
    """
    from hf_wavepos.data import load_text_splits

    parts = spec.split(":")
    try:
        if parts[0] != "stdlib-heldout" or len(parts) not in (2, 3):
            raise ValueError
        size = float(parts[1]) if "." in parts[1] else int(parts[1])
        seed = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(
            f"source {spec!r}: write stdlib-heldout:N or stdlib-heldout:N:SEED with the recipe's "
            "data.validation_size (N) and data.seed (SEED), e.g. stdlib-heldout:40"
        ) from None
    splits = load_text_splits("stdlib", validation_size=size, seed=seed, max_documents=1)
    return list(splits.validation["text"])


def load_texts(
    source: str,
    *,
    text_column: str = "text",
    config_name: str | None = None,
    split: str = "test",
    min_chars: int = 0,
    max_documents: int | None = None,
) -> list[str]:
    """Load evaluation documents as strings.

    Args:
        source: ``"stdlib"``, ``"stdlib-heldout:N[:SEED]"``, a local path, or a Hub dataset name
            (see the module docstring).
        text_column: the field holding the text (JSON lines and Hub datasets).
        config_name: the Hub dataset's configuration, if it has several.
        split: the Hub dataset's split.
        min_chars: drop documents shorter than this many characters.
        max_documents: keep at most this many (the first ones, in the source's order).

    Returns:
        The documents, in the source's order.

    Raises:
        ValueError: the source is missing, empty, lacks ``text_column``, or has no document of
            at least ``min_chars`` characters.
    """
    if source == "stdlib":
        from hf_wavepos.data.corpus import stdlib_files  # hf_wavepos.data imports `datasets`: only when needed

        texts = [p.read_text(encoding="utf-8", errors="replace") for p in stdlib_files(seed=None)]
    elif source.startswith("stdlib-heldout"):
        texts = stdlib_heldout_texts(source)
    elif looks_like_path(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"source {source!r} does not exist; give an existing file or folder, 'stdlib', or a Hub dataset name")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in TEXT_SUFFIXES)
            texts = [p.read_text(encoding="utf-8", errors="replace") for p in files]
        elif path.suffix in (".jsonl", ".json"):
            records = read_jsonl(path)
            missing = [i for i, r in enumerate(records) if not isinstance(r.get(text_column), str)]
            if missing:
                raise ValueError(f"{path}: record {missing[0]} has no string field text_column={text_column!r}")
            texts = [r[text_column] for r in records]
        else:
            texts = [path.read_text(encoding="utf-8", errors="replace")]
    else:
        dataset = load_hub_dataset(source, config_name, split)
        if text_column not in dataset.column_names:
            raise ValueError(
                f"dataset {source!r} has no column text_column={text_column!r}; its columns are {dataset.column_names}"
            )
        texts = list(dataset[text_column])
    texts = [t for t in texts if len(t) >= min_chars]
    if max_documents is not None:
        texts = texts[:max_documents]
    if not texts:
        raise ValueError(f"source {source!r} gave no document with at least min_chars={min_chars} characters")
    return texts
