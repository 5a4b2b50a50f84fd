"""Readers for the datasets the project measures on (DESIGN.md §6); no downloads, ever."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from qcompiler.errors import CalibrationDataError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
# Mean and standard deviation of the Fashion-MNIST training pixels scaled to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzipped IDX file (the MNIST family's format) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str, root: Path = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return (images, labels) of a Fashion-MNIST split, images normalized as float32 N x 1 x 28 x 28.

    The files come from Debian's `dataset-fashion-mnist` package.
    """
    prefix = {"train": "train", "test": "t10k"}[split]
    images_path = root / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = root / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise CalibrationDataError(
            f"{images_path}: Fashion-MNIST not found; install it with "
            "`apt-get install dataset-fashion-mnist`"
        )
    images = _read_idx(images_path).astype(np.float32) / 255.0
    images = (images - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    labels = _read_idx(labels_path).astype(np.int64)
    return images[:, None, :, :].astype(np.float32), labels
