"""The bundled example models and data (installed as `qcompiler.models`).

    from qcompiler import models
    models.path("fashion_resnet8.onnx")          # a pathlib.Path inside the installed package

The recipes that made them are in `qcompiler.models.recipes` (they need the `recipes` extra).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

#: The model `qcompiler demo` works on.
DEFAULT_MODEL = "fashion_resnet8.onnx"
#: 300 labelled Fashion-MNIST test images (30 per class), preprocessed as the models expect.
FASHION_SUBSET = "fashion_mnist_subset.npz"


def path(name: str) -> Path:
    """The installed path of a bundled file; FileNotFoundError names the ones that exist."""
    found = HERE / name
    if not found.is_file():
        raise FileNotFoundError(f"no bundled file {name!r}; bundled: {sorted(bundled())}")
    return found


def bundled() -> list[str]:
    return sorted(p.name for p in HERE.iterdir() if p.suffix in (".onnx", ".npz"))
