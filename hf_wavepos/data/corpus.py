"""The embedded default corpus: the Python standard library source of the running interpreter.

Every Python installation carries it, so training and evaluation work with no download and no
arguments. One document is one ``.py`` file (its text and its path relative to the stdlib root);
``site-packages`` is left out so the corpus does not depend on what else is installed.
"""

from __future__ import annotations

import functools
import random
import sysconfig
from pathlib import Path
from typing import Iterator

STDLIB_NAME = "stdlib"
"""The `dataset` value that selects this corpus."""


def stdlib_root() -> Path:
    """The folder holding the running interpreter's standard library source."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(max_documents: int | None = None, seed: int | None = 0) -> list[Path]:
    """The corpus' ``.py`` files in a fixed order: the one list training and evaluation share.

    Args:
        max_documents: keep only this many files (None: all ~1,800).
        seed: files are sorted by their path relative to the stdlib folder, then shuffled with
            this seed, so a small ``max_documents`` still samples the whole library rather than
            its first folder; None keeps the sorted order.

    Returns:
        Absolute paths; the same list for the same interpreter, seed and limit.

    Raises:
        ValueError: a bad ``max_documents``, or an interpreter without its standard library source.
    """
    if max_documents is not None and (not isinstance(max_documents, int) or max_documents < 1):
        raise ValueError(f"max_documents must be a positive integer or None, got {max_documents!r}.")
    root = stdlib_root()
    files = list(_sorted_sources(str(root)))
    if not files:
        raise ValueError(
            f"no Python source found under {root}; this interpreter ships without its standard "
            "library source, so set data.dataset to a Hub name or data.data_files to local files."
        )
    if seed is not None:
        random.Random(seed).shuffle(files)
    return files[:max_documents] if max_documents is not None else files


@functools.lru_cache(maxsize=2)
def _sorted_sources(root: str) -> tuple[Path, ...]:
    base = Path(root)
    files = (p for p in base.rglob("*.py") if "site-packages" not in p.relative_to(base).parts and p.is_file())
    return tuple(sorted(files, key=lambda p: p.relative_to(base).as_posix()))


def iter_stdlib_documents(files: list[Path]) -> Iterator[dict[str, str]]:
    """Yield ``{"text": source, "path": relative path}`` for each file (undecodable bytes replaced)."""
    root = stdlib_root()
    for path in files:
        yield {"text": path.read_text(encoding="utf-8", errors="replace"), "path": str(path.relative_to(root))}
