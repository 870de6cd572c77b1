"""Where a model or tokenizer is loaded from: a local path or a Hugging Face Hub id.

transformers takes any text that is not an existing folder for a Hub id, so a mistyped local
path (``scratch/nope_dir``) becomes minutes of Hub retries and a network traceback. These helpers
tell a text that can only be a local path from one that may be a Hub id, and turn loading errors
into one clear message. Used by ``wavepos convert``, ``wavepos eval`` and ``wavepos card/push``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def is_local_path(source: str | Path) -> bool:
    """Whether ``source`` can only mean a local path (so it is never looked up on the Hub).

    True for a `Path`, an existing path, a text starting with ``/ ./ ../ ~`` (or ``.`` / ``..``),
    a text with more than one ``/`` (a Hub id is ``name`` or ``owner/name``), and a text whose
    parent folder exists locally (``scratch/nope_dir`` with a folder ``scratch``).
    """
    if isinstance(source, Path):
        return True
    text = str(source)
    if text in (".", "..") or text.startswith(LOCAL_PREFIXES) or text.count("/") > 1:
        return True
    path = Path(text).expanduser()
    return path.exists() or (path.parent != Path(".") and path.parent.is_dir())


def check_local_source(source: str | Path, what: str = "model folder") -> None:
    """Raise FileNotFoundError when ``source`` is a local path (`is_local_path`) that does not exist.

    Raises:
        FileNotFoundError: naming ``what`` and the path, before any Hub lookup.
    """
    if is_local_path(source) and not Path(str(source)).expanduser().exists():
        raise FileNotFoundError(f"{what} {str(source)!r} does not exist (it is a local path, so the Hub is not "
                                "tried); check the path.")


def loading_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "could not load from this folder or Hub id": OSError (missing
    files, offline mode, repository not found) and the HTTP client's transport errors."""
    errors: list[type[BaseException]] = [OSError]
    try:
        import httpx

        errors.append(httpx.HTTPError)
    except ImportError:
        pass
    return tuple(errors)


@contextlib.contextmanager
def loading(source: str | Path, what: str, kinds: str = "a local folder, nor a Hub id") -> Iterator[None]:
    """Context of loading ``source`` with ``from_pretrained``: a missing local path is refused first
    (`check_local_source`), and a loading failure (`loading_errors`) becomes one ValueError.

    Args:
        source: the folder or Hub id; what: how the user gave it (``"SRC"``, ``"model.pretrained"``);
        kinds: what ``source`` may be, for the message.

    Raises:
        FileNotFoundError: a missing local path (never looked up on the Hub).
        ValueError: ``"{what} {source!r} is neither {kinds} that could be loaded: <reason>"``.
    """
    if is_local_path(source) and not Path(str(source)).expanduser().exists():
        raise FileNotFoundError(f"{what} {str(source)!r} is neither {kinds} that could be loaded: the local path "
                                f"{str(source)!r} does not exist (the Hub is not tried for a local path); check the path.")
    try:
        yield
    except loading_errors() as err:
        raise ValueError(f"{what} {str(source)!r} is neither {kinds} that could be loaded: "
                         f"{type(err).__name__}: {err}") from err
