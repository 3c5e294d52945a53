"""Locating external data sources, and the error raised when one is not installed."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MissingDataError", "env_dir"]


class MissingDataError(FileNotFoundError):
    """A benchmark's data source is not installed; the message says how to install it."""


def env_dir(variable: str) -> Path | None:
    """The folder named by environment variable ``variable``, or ``None`` when it is unset."""
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None
