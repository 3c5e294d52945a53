"""Fashion-MNIST idx loading, MultiFashion composition and the multifashion problems."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from lossrag.bench.data import MissingDataError, fashion
from lossrag.bench.data.fashion import (
    FASHION_ENV,
    fashion_mnist_dir,
    load_fashion_mnist,
    make_multifashion,
    read_idx,
)
from lossrag.bench.problems import get_problem


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (gzip-compressed), as the Debian files are."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def write_fake_fashion(folder: Path, n_train: int = 300, n_test: int = 100) -> Path:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 256, (n, 28, 28)) * (rng.random((n, 28, 28)) < 0.5)
        images[:, :, 0] = labels[:, None] * 20  # a class-dependent stripe
        image_file, label_file = fashion.FASHION_FILES[split]
        write_idx(folder / image_file, images)
        write_idx(folder / label_file, labels)
    return folder


@pytest.fixture
def fake_fashion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = write_fake_fashion(tmp_path / "fashion")
    monkeypatch.setenv(FASHION_ENV, str(folder))
    return folder


def test_read_idx_round_trip_and_errors(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "raw").write_bytes(
        bytes([0, 0, 0x08, 1]) + (3).to_bytes(4, "big") + b"\x01\x02\x03"
    )
    assert read_idx(tmp_path / "raw").tolist() == [1, 2, 3]
    (tmp_path / "bad").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x05")
    with pytest.raises(ValueError, match="bad magic"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(bytes([0, 0, 0x08, 1]) + (5).to_bytes(4, "big") + b"\x01")
    with pytest.raises(ValueError, match=r"has 9 bytes"):
        read_idx(tmp_path / "short")


def test_env_folder_is_used(fake_fashion: Path) -> None:
    assert fashion_mnist_dir() == fake_fashion
    images, labels = load_fashion_mnist("train")
    assert images.shape == (300, 28, 28) and images.dtype == np.uint8 and labels.shape == (300,)
    assert not images.flags.writeable


def test_missing_fashion_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FASHION_ENV, str(tmp_path / "empty"))
    with pytest.raises(MissingDataError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist_dir()
    monkeypatch.delenv(FASHION_ENV)
    monkeypatch.setattr(fashion, "_dpkg_dirs", lambda: [])
    monkeypatch.setattr(fashion, "_KNOWN_DIRS", (tmp_path / "nowhere",))
    with pytest.raises(MissingDataError, match=FASHION_ENV):
        get_problem("multifashion").load(0)


def test_multifashion_composition() -> None:
    rng = np.random.default_rng(0)
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    images[0, :, :] = 100  # a flat square
    images[1, 5, 5] = 255  # one bright pixel
    labels = np.array([3, 7], dtype=np.uint8)
    pairs = make_multifashion(images, labels, 200, rng)
    assert pairs.x.shape == (200, 36, 36) and pairs.x.dtype == np.float32
    assert pairs.left_image.shape == (200, 196)
    for i in range(200):
        left = images[labels.tolist().index(pairs.left[i])] / 255
        right = images[labels.tolist().index(pairs.right[i])] / 255
        placements = [
            np.maximum(_paste(left, r1, c1), _paste(right, 8 - r2, 8 - c2))
            for r1 in range(3) for c1 in range(3) for r2 in range(3) for c2 in range(3)
        ]  # fmt: skip
        assert any(np.allclose(pairs.x[i], p) for p in placements)
    flat = pairs.left == 3
    assert np.allclose(pairs.left_image[flat], 100 / 255)


def _paste(item: np.ndarray, row: int, col: int) -> np.ndarray:
    canvas = np.zeros((36, 36))
    canvas[row : row + 28, col : col + 28] = item
    return canvas


@pytest.mark.parametrize("name", ["multifashion", "multifashion4"])
def test_problem_on_fake_files(fake_fashion: Path, name: str) -> None:
    p = get_problem(name, n_train=40, n_val=20, n_test=30, val_pool=100)
    splits = p.load(0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 20, 30)
    model = p.build_model(0)
    out = model(splits.train.x[:4])
    for task in p.tasks:
        task.check(out[task.name], splits.train.y[task.name][:4])
    assert list(p.evaluate(model, splits.test)) == p.scored
    assert len(p.tasks) == (4 if name == "multifashion4" else 2)
    again = p.load(0)
    assert torch.equal(splits.train.x, again.train.x)
    assert torch.equal(splits.test.y["left"], again.test.y["left"])


@pytest.mark.slow
def test_real_fashion() -> None:
    """Needs Debian's dataset-fashion-mnist (the benchmark's install step); slow run only."""
    fashion_mnist_dir()  # a MissingDataError here says how to install it
    images, labels = load_fashion_mnist("train")
    assert images.shape == (60000, 28, 28) and np.bincount(labels).tolist() == [6000] * 10
    test_images, _ = load_fashion_mnist("test")
    assert test_images.shape == (10000, 28, 28)
    splits = get_problem("multifashion4", n_train=1000, n_val=100, n_test=100).load(0)
    assert splits.train.x.shape == (1000, 36, 36) and splits.train.y["left_image"].shape[1] == 196
