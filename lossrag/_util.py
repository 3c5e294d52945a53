"""Small helpers shared across the package: data folders, name suggestions, atomic writes."""

from __future__ import annotations

import difflib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "CACHE_ENV",
    "atomic_write_bytes",
    "atomic_write_text",
    "cache_dir",
    "data_dir",
    "suggest",
    "unknown_name_error",
]

_PACKAGE = Path(__file__).resolve().parent
#: Environment variable naming the cache folder.
CACHE_ENV = "LOSSRAG_CACHE"


def cache_dir() -> Path:
    """The cache folder: ``$LOSSRAG_CACHE`` if set, else ``~/.cache/lossrag``."""
    configured = os.environ.get(CACHE_ENV)
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "lossrag"


def data_dir(name: str) -> Path:
    """Return the folder of a data directory shipped with LossRAG (``library``, ``policies``, ...).

    A wheel install carries them inside the package (``lossrag/_data/<name>``); a source checkout or
    an editable install finds them at the repository root beside ``lossrag/``.
    """
    for candidate in (_PACKAGE / "_data" / name, _PACKAGE.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"LossRAG data folder {name!r} was not found inside the package ({_PACKAGE / '_data'}) nor "
        f"beside it ({_PACKAGE.parent}); reinstall LossRAG with `pip install .`."
    )


def suggest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` entries of ``choices`` closest to ``name`` (case-insensitive)."""
    pool = {c.lower(): c for c in choices}
    return [pool[m] for m in difflib.get_close_matches(name.lower(), list(pool), n=n, cutoff=0.4)]


def unknown_name_error(what: str, name: str, choices: Iterable[str]) -> ValueError:
    """Build the error for an unknown ``what`` called ``name``, naming the closest valid choices."""
    choices = sorted(choices)
    close = suggest(name, choices)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(f"Unknown {what} {name!r}.{hint} Known: {', '.join(choices)}.")


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: a temporary file in the same folder, then a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.fchmod(fd, 0o644)  # mkstemp's 0600 would make results unreadable to others
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))
