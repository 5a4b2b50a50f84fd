"""Writing outputs so that nothing partial is ever left: a temporary name, then a rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qcompiler.errors import OutputError


def prepare_output_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed; an OutputError if it is a file or cannot be made."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path}: exists and is not a folder; give a folder for the outputs")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{path}: cannot create the output folder: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise OutputError(f"{path}: the output folder is not writable")
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; an output file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
