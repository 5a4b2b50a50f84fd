"""Atomic saving: a model appears under its final name complete, or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import onnx

from qcompiler.errors import OutputError
from qcompiler.ir.model import Model
from qcompiler.ir.validate import serialized_size

# Protobuf cannot serialize a message over 2 GiB; above this the weights go to a data file.
EXTERNAL_DATA_THRESHOLD = onnx.checker.MAXIMUM_PROTOBUF


def save(model: Model | onnx.ModelProto, path: str | os.PathLike, *,
         external_data_threshold: int = EXTERNAL_DATA_THRESHOLD) -> Path:
    """Write `model` to `path` through a temporary name in the same folder, then rename.

    Models whose serialized size would exceed `external_data_threshold` store their tensors in
    `<name>.data` beside the model (written and renamed first, so the model never points at a
    missing file). On any error, including KeyboardInterrupt, the temporary files are removed.
    """
    path = Path(path)
    proto = model.to_onnx() if isinstance(model, Model) else model
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"{path}: the folder {folder} does not exist; create it first")
    if path.is_dir():
        raise OutputError(f"{path}: is a folder; give a file name ending in .onnx")
    try:
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=folder))
    except OSError as exc:
        raise OutputError(f"{path}: cannot write to {folder}: {exc.strerror}") from None
    try:
        tmp_model = tmp_dir / path.name
        if serialized_size(proto) > external_data_threshold:
            data_name = f"{path.name}.data"
            onnx.save_model(proto, str(tmp_model), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(tmp_dir / data_name, folder / data_name)
        else:
            onnx.save_model(proto, str(tmp_model))
        os.replace(tmp_model, path)
    except OSError as exc:
        raise OutputError(f"{path}: writing failed: {exc.strerror or exc}") from None
    finally:
        for leftover in tmp_dir.iterdir():
            leftover.unlink()
        tmp_dir.rmdir()
    return path
