"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, and MultiFashion pairs.

The four ``*-idx?-ubyte.gz`` files are looked up in ``$LOSSRAG_FASHION_MNIST`` if it is set, else in
the folder ``dpkg -L dataset-fashion-mnist`` lists, else in ``/usr/share/datasets/fashion-mnist``.
MultiFashion follows the MultiMNIST recipe of Sener & Koltun (2018): item A top-left and item B
bottom-right of a 36×36 canvas, 0–2 px jitter each, combined by pixel-wise maximum.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from lossrag.bench.data._source import MissingDataError, env_dir

__all__ = [
    "FASHION_ENV",
    "FASHION_FILES",
    "MultiFashion",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "make_multifashion",
    "read_idx",
]

#: Environment variable naming a folder with the four Fashion-MNIST idx files.
FASHION_ENV = "LOSSRAG_FASHION_MNIST"
#: File names per split: (images, labels).
FASHION_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_KNOWN_DIRS = (Path("/usr/share/datasets/fashion-mnist"),)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_INSTALL = (
    "Install Debian's package with `sudo apt-get install -y dataset-fashion-mnist` (Debian 12+, "
    f"Ubuntu), or set {FASHION_ENV} to a folder holding "
    + ", ".join(name for pair in FASHION_FILES.values() for name in pair)
    + "."
)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for pair in FASHION_FILES.values() for name in pair)


def _dpkg_dirs() -> list[Path]:
    dpkg = shutil.which("dpkg")
    if dpkg is None:
        return []
    try:
        listed = subprocess.run(
            [dpkg, "-L", "dataset-fashion-mnist"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if listed.returncode != 0:
        return []
    name = FASHION_FILES["train"][0]
    return [Path(line).parent for line in listed.stdout.splitlines() if line.endswith(name)]


def fashion_mnist_dir() -> Path:
    """The folder holding the Fashion-MNIST idx files.

    Raises:
        MissingDataError: Not found; the message says how to install it.
    """
    configured = env_dir(FASHION_ENV)
    candidates = [configured] if configured is not None else [*_dpkg_dirs(), *_KNOWN_DIRS]
    for folder in candidates:
        if _complete(folder):
            return folder
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise MissingDataError(f"Fashion-MNIST was not found (looked in: {looked}). {_INSTALL}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed if its name ends in ``.gz``) into a numpy array.

    Raises:
        ValueError: The file is not a valid IDX file (bad magic, dtype code or length).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot read it as an IDX file ({err}).") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic number {data[:4].hex()}).")
    ndim = data[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"{path}: IDX header says {dims} ({expected} bytes) but the file has {len(data)} bytes."
        )
    return (
        np.frombuffer(data, dtype=dtype, offset=header)
        .reshape(dims)
        .astype(dtype.newbyteorder("="))
    )


@lru_cache(maxsize=4)
def _load_cached(folder: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    image_file, label_file = FASHION_FILES[split]
    images = read_idx(Path(folder) / image_file)
    labels = read_idx(Path(folder) / label_file)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"Fashion-MNIST {split} files in {folder} disagree: images {images.shape}, "
            f"labels {labels.shape}; expected (N, 28, 28) and (N,)."
        )
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (N, 28, 28) uint8, labels (N,) uint8)`` of a Fashion-MNIST split.

    The arrays are read-only and cached in the process.
    """
    if split not in FASHION_FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}.")
    return _load_cached(str(fashion_mnist_dir()), split)


@dataclass(frozen=True)
class MultiFashion:
    """MultiFashion pairs.

    Attributes:
        x: ``(n, 36, 36)`` float32 in ``[0, 1]``, the two items combined by pixel-wise maximum.
        left, right: ``(n,)`` int64 class of the top-left / bottom-right item.
        left_image, right_image: ``(n, 196)`` float32, each item alone at 14×14 (2×2 mean).
    """

    x: np.ndarray
    left: np.ndarray
    right: np.ndarray
    left_image: np.ndarray
    right_image: np.ndarray


def _downsample(images: np.ndarray) -> np.ndarray:
    n, h, w = images.shape
    pooled = images.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4))
    return pooled.reshape(n, -1).astype(np.float32)


def _place(canvas: np.ndarray, items: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Max-combine ``items`` into ``canvas`` at per-sample offsets (vectorised over offsets)."""
    h, w = items.shape[1:]
    for r in np.unique(rows):
        for c in np.unique(cols):
            sel = (rows == r) & (cols == c)
            window = canvas[sel, r : r + h, c : c + w]
            canvas[sel, r : r + h, c : c + w] = np.maximum(window, items[sel])


def make_multifashion(
    images: np.ndarray,
    labels: np.ndarray,
    n: int,
    rng: np.random.Generator,
    *,
    size: int = 36,
    jitter: int = 2,
) -> MultiFashion:
    """Compose ``n`` pairs from ``images`` (``(N, 28, 28)`` uint8) drawn at random with ``rng``."""
    item = images.shape[1]
    if size < item + jitter:
        raise ValueError(f"make_multifashion: size {size} must be at least {item + jitter}.")
    a, b = rng.integers(0, len(images), n), rng.integers(0, len(images), n)
    first = images[a].astype(np.float32) / 255.0
    second = images[b].astype(np.float32) / 255.0
    offset = size - item
    canvas = np.zeros((n, size, size), dtype=np.float32)
    _place(canvas, first, rng.integers(0, jitter + 1, n), rng.integers(0, jitter + 1, n))
    _place(
        canvas,
        second,
        offset - rng.integers(0, jitter + 1, n),
        offset - rng.integers(0, jitter + 1, n),
    )
    return MultiFashion(
        canvas,
        labels[a].astype(np.int64),
        labels[b].astype(np.int64),
        _downsample(first),
        _downsample(second),
    )
