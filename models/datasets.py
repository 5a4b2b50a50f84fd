"""Readers for the datasets our benchmarks, tests and recipes measure on (Debian and PyPI
packages; no downloads, ever). Not part of the compiler: installed as qcompiler.models.datasets."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from qcompiler.data import IMAGENET_MEAN, IMAGENET_STD  # noqa: F401  (re-exported for the recipes)

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


def load_foolbox_imagenet(size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """foolbox's 20 labelled ImageNet samples as (N x 3 x size x size float32, labels).

    The files (data/imagenet_<i>_<label>.jpg, 512 x 512) are read from the installed
    package's folder (`pip install --no-deps foolbox`); foolbox itself is never imported.
    Each image is resized to size x size (bilinear, no crop), scaled to [0, 1] and normalized
    with the ImageNet mean and std.
    """
    import importlib.util

    from PIL import Image

    spec = importlib.util.find_spec("foolbox")
    if spec is None:
        raise CalibrationDataError("foolbox's ImageNet samples not found; install them with "
                                   "`pip install --no-deps foolbox`")
    files = sorted((Path(spec.submodule_search_locations[0]) / "data").glob("imagenet_*.jpg"))
    pixels = [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR), np.float32) / 255
              for f in files]
    images = ((np.stack(pixels) - IMAGENET_MEAN) / IMAGENET_STD).transpose(0, 3, 1, 2).astype(np.float32)
    labels = np.array([int(f.stem.rsplit("_", 1)[1]) for f in files], dtype=np.int64)
    return images, labels


OPENCV_SAMPLES_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
#: scikit-image's bundled photographs of objects and scenes (its textures and micrographs are left
#: out: with no ImageNet class in them, a classifier's top-1 there is noise).
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "motorcycle_right.png",
                  "rocket.jpg")


def unlabelled_photos() -> dict[str, list[Path]]:
    """Unlabelled colour photos by source: Debian's opencv-doc samples and scikit-image's data
    folder (read from the installed package, never imported). Sources not installed are empty."""
    import importlib.util

    from PIL import Image

    opencv = []
    if OPENCV_SAMPLES_DIR.is_dir():
        for path in sorted(OPENCV_SAMPLES_DIR.glob("*")):
            if path.suffix.lower() in (".jpg", ".jpeg", ".png"):
                with Image.open(path) as image:
                    if image.mode in ("RGB", "RGBA", "P") and min(image.size) >= 128:
                        opencv.append(path)
    spec = importlib.util.find_spec("skimage")
    skimage = []
    if spec is not None:
        folder = Path(spec.submodule_search_locations[0]) / "data"
        skimage = [folder / name for name in SKIMAGE_PHOTOS if (folder / name).is_file()]
    return {"opencv-doc": opencv, "scikit-image": skimage}
