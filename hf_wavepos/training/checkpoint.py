"""Training-state checkpoints that an interruption at any moment cannot corrupt.

A checkpoint is a folder ``<output_dir>/checkpoints/checkpoint-<step>`` holding what
`accelerate.Accelerator.save_state` writes (model, optimiser, scheduler, gradient scaler, the RNG
state of every process) plus ``trainer_state.json`` (step, data position, metrics so far).

Atomicity: every process writes into a hidden ``.tmp-checkpoint-<step>`` folder; once all have
finished, the main process fsyncs the files and renames the folder to its final name (``rename``
is atomic on POSIX file systems). A folder named ``checkpoint-*`` is therefore always complete,
and a killed save leaves only a ``.tmp-*`` folder that is ignored and cleared later. Old
checkpoints are first renamed to ``.trash-*`` and then deleted, so a kill during pruning cannot
leave a half-deleted folder under a valid name either.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"


def checkpoints_root(output_dir: str | Path) -> Path:
    """The folder holding the checkpoints of a run."""
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run as ``(step, folder)``, oldest first."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        name = path.name
        if name.startswith(PREFIX) and name[len(PREFIX):].isdigit() and (path / STATE_FILE).is_file():
            found.append((int(name[len(PREFIX):]), path))
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """The folder ``--resume_from_checkpoint`` points at.

    Args:
        resume: None (start fresh), ``"latest"`` (newest checkpoint of ``output_dir``, or a fresh
            start when there is none), or a checkpoint folder.
        output_dir: the run's output folder.

    Raises:
        ValueError: a folder that is not a complete checkpoint.
    """
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(output_dir)
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        found = ", ".join(p.name for _, p in list_checkpoints(output_dir)) or "none"
        raise ValueError(
            f"--resume_from_checkpoint {resume}: not a complete checkpoint (no {STATE_FILE}); "
            f"checkpoints in {output_dir}: {found}. Use 'latest' to pick the newest."
        )
    return path


def read_state(checkpoint: str | Path) -> dict[str, Any]:
    """The ``trainer_state.json`` of a checkpoint."""
    return json.loads((Path(checkpoint) / STATE_FILE).read_text())


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON so that readers see either the old file or the complete new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(accelerator: Any, output_dir: str | Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    """Save the full training state atomically; call on every process.

    Args:
        accelerator: the run's `accelerate.Accelerator` (model, optimiser, scheduler prepared or
            registered).
        output_dir: the run's output folder.
        step: optimiser steps done; names the folder.
        state: JSON data stored as ``trainer_state.json`` (must include the data position).
        keep_last: number of newest checkpoints to keep.

    Returns:
        The final checkpoint folder.
    """
    root = checkpoints_root(output_dir)
    final = root / f"{PREFIX}{step:08d}"
    tmp = root / f".tmp-{PREFIX}{step:08d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(tmp / STATE_FILE, state)
        _fsync_tree(tmp)
        if final.exists():  # the same step saved again (e.g. a resumed run): swap atomically
            _discard(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        for _, old in list_checkpoints(output_dir)[:-keep_last]:
            _discard(old)
        for leftover in root.glob(".tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Any, checkpoint: str | Path) -> dict[str, Any]:
    """Restore the training state saved by `save_checkpoint`; call on every process.

    Returns:
        The checkpoint's ``trainer_state.json``.
    """
    accelerator.load_state(str(checkpoint))
    return read_state(checkpoint)


def _discard(folder: Path) -> None:
    trash = folder.with_name(f".trash-{folder.name}")
    if trash.exists():
        shutil.rmtree(trash)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)
