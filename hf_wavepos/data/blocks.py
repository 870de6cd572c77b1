"""Pre-packed training blocks on disk: token ids that are already cut into ``block_size`` rows.

Some experiments build their training rows themselves (the retrieval benchmark mixes corpus
blocks with synthetic passkey blocks that must not be cut or merged by packing). They save a
`datasets.DatasetDict` with `save_packed_blocks`; the training loop reads it when
``data.dataset`` names that folder and skips tokenisation and packing.

Folder layout: what `datasets.DatasetDict.save_to_disk` writes, with a ``train`` split and
optionally a ``validation`` split, each with columns

- ``input_ids``: ``block_size`` token ids per row;
- ``position_ids`` (optional): ``block_size`` positions per row, restarting at 0 where a document
  starts (see `hf_wavepos.data.packing`); absent means one document per row (0 .. block_size - 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import numpy as np

PACKED_MARKER = "wavepos_packed_blocks.json"
"""File written next to the splits; its presence marks a folder as pre-packed blocks."""


def is_packed_folder(path: str | Path | None) -> bool:
    """True when ``path`` is a folder written by `save_packed_blocks`."""
    return path is not None and (Path(path) / PACKED_MARKER).is_file()


def save_packed_blocks(
    folder: str | Path, train: dict[str, np.ndarray], validation: dict[str, np.ndarray] | None = None,
    description: str = "",
) -> Path:
    """Write pre-packed blocks for the training loop (``data.dataset=<folder>``).

    Args:
        folder: destination (created; an existing pre-packed folder is replaced).
        train: ``{"input_ids": (N, L) ints, "position_ids": (N, L) ints (optional)}``.
        validation: the same for held-out rows (optional).
        description: one line saying what the rows are (shown in training logs).

    Returns:
        The folder.
    """
    folder = Path(folder)
    splits = {"train": train} | ({"validation": validation} if validation is not None else {})
    block_size = None
    columns = {}
    for name, rows in splits.items():
        if "input_ids" not in rows:
            raise ValueError(f"{name} blocks need an 'input_ids' array of shape (N, block_size).")
        for key, value in rows.items():
            value = np.asarray(value)
            if value.ndim != 2 or value.shape[0] == 0:
                raise ValueError(f"{name}[{key!r}] must be a non-empty (N, block_size) array, got shape {value.shape}.")
            if block_size is not None and value.shape[1] != block_size:
                raise ValueError(f"{name}[{key!r}] has rows of {value.shape[1]} tokens; other rows have {block_size}.")
            block_size = value.shape[1]
        columns[name] = {key: np.asarray(value, dtype=np.int32).tolist() for key, value in rows.items()}
    dataset = datasets.DatasetDict({name: datasets.Dataset.from_dict(cols) for name, cols in columns.items()})
    dataset.save_to_disk(str(folder))
    (folder / PACKED_MARKER).write_text(json.dumps({"block_size": block_size, "description": description}) + "\n")
    return folder


def load_packed_blocks(folder: str | Path, block_size: int, validation_size: float | int, seed: int) -> tuple[Any, Any, str]:
    """Read blocks written by `save_packed_blocks`.

    Args:
        folder: the folder (``data.dataset``).
        block_size: the run's ``data.block_size``; every row must have exactly this many tokens.
        validation_size: held-out rows (count or fraction) when the folder has no validation split.
        seed: the draw of held-out rows.

    Returns:
        ``(train, validation, description)``: `datasets.Dataset` objects with ``input_ids`` and
        ``position_ids`` columns, and a line describing them.
    """
    folder = Path(folder)
    meta = json.loads((folder / PACKED_MARKER).read_text())
    if meta["block_size"] != block_size:
        raise ValueError(
            f"data.dataset={str(folder)!r} holds blocks of {meta['block_size']} tokens but data.block_size is "
            f"{block_size}; set data.block_size={meta['block_size']} (pre-packed rows are not re-cut)."
        )
    loaded = datasets.load_from_disk(str(folder))
    train = loaded["train"]
    if "validation" in loaded:
        validation = loaded["validation"]
    else:
        parts = train.train_test_split(test_size=validation_size, seed=seed, shuffle=True)
        train, validation = parts["train"], parts["test"]
    train, validation = _with_positions(train, block_size), _with_positions(validation, block_size)
    return train, validation, f"pre-packed blocks {folder} ({len(train)} train / {len(validation)} held-out): " + (
        meta.get("description") or "")


def _with_positions(ds: Any, block_size: int) -> Any:
    if "position_ids" in ds.column_names:
        return ds.select_columns(["input_ids", "position_ids"])
    positions = list(range(block_size))
    return ds.select_columns(["input_ids"]).map(lambda _: {"position_ids": positions}, desc="position ids")
