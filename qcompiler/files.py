"""Writing outputs so that nothing partial is ever left.

One file: a temporary name in the same folder, then a rename (`write_bytes_atomic`). A set of
files (a library folder, a model and its report): `OutputSet` stages them all in one hidden
folder inside the output folder and moves them into place only once every file is complete,
with Ctrl-C held off for the few renames; on any error the staging folder goes, and a folder
that the command created is removed again. Existing outputs are refused unless the caller says
`force`; an output that is one of the command's inputs is refused always.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from qcompiler import supervise
from qcompiler.errors import OutputError

STAGING_PREFIX = ".qcompiler-staging-"


def cache_root() -> Path:
    """Where measurements reused across runs live: $QCOMPILER_CACHE, else $XDG_CACHE_HOME/qcompiler
    (~/.cache/qcompiler)."""
    explicit = os.environ.get("QCOMPILER_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qcompiler"


def read_cache(path: Path, parse):
    """parse(text) of a cache entry written by write_cache; None when there is none, or when it
    cannot be parsed (a warning: the caller measures again)."""
    if not path.exists():
        return None
    try:
        return parse(path.read_text())
    except (OSError, ValueError, KeyError, TypeError):
        logging.getLogger(__name__).warning("cache entry %s is unreadable; measuring again", path)
        return None


def write_cache(path: Path, text: str) -> None:
    """A cache entry under cache_root(), written atomically; a cache that cannot be written is a
    warning (the measurement is still returned), never a failed run."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    except (OSError, OutputError) as error:
        logging.getLogger(__name__).warning("could not cache %s: %s", path, error)


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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; an output file gets the usual mode
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise OutputError(f"{path}: writing failed: {exc.strerror or exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (through links, `..` or case-folding file systems)."""
    try:
        return Path(a).resolve() == Path(b).resolve() or os.path.samefile(a, b)
    except OSError:
        return False


class OutputSet:
    """The files one command writes into `folder` (`names`: every name it may write; files it
    writes that are not listed, such as --dump-after's, are moved in too)."""

    def __init__(self, folder: str | os.PathLike, names: Iterable[str], *, force: bool = False,
                 inputs: Iterable[str | os.PathLike] = (), flag: str = "--force") -> None:
        self.folder, self.names, self.force = Path(folder), list(names), force
        self.inputs, self.flag = [Path(p) for p in inputs if p is not None], flag

    def check(self) -> None:
        """Refuse, before any work, outputs that exist (without force) or that are inputs (always)."""
        if self.folder.exists() and not self.folder.is_dir():
            raise OutputError(f"{self.folder}: exists and is not a folder; give a folder for the outputs")
        for name in self.names:
            target = self.folder / name
            for source in self.inputs:
                if same_file(target, source) or (source.is_dir() and same_file(self.folder, source)):
                    raise OutputError(f"{target}: is an input of this command; write the outputs elsewhere")
        existing = [n for n in self.names if (self.folder / n).exists() or (self.folder / n).is_symlink()]
        if existing and not self.force:
            raise OutputError(f"{self.folder / existing[0]}: exists ({len(existing)} of this command's outputs "
                              f"do); pass {self.flag} to replace them, or choose another output")

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A hidden folder to write every output into; its files move into `folder` when the
        block ends without an error (and outputs of an earlier run that this one did not write
        are removed, so that no stale report sits beside a new library)."""
        self.check()
        created = not self.folder.exists()
        prepare_output_dir(self.folder)
        try:
            stage = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.folder))
        except OSError as exc:
            raise OutputError(f"{self.folder}: cannot write: {exc.strerror}") from None
        supervise.note_staging(stage)
        try:
            yield stage
            supervise.raise_if_interrupted()   # a Ctrl-C that native code swallowed still stops the commit
            self._commit(stage)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
            supervise.note_staging(None)
            if created and not any(self.folder.iterdir()):
                self.folder.rmdir()

    def _commit(self, stage: Path) -> None:
        written = sorted(p.name for p in stage.iterdir())
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            for name in written:
                if (self.folder / name).is_dir() and not (self.folder / name).is_symlink():
                    shutil.rmtree(self.folder / name)   # a folder output (the demo's library) is replaced whole
                os.replace(stage / name, self.folder / name)
            for name in self.names:
                if name not in written:
                    _remove(self.folder / name)
        except OSError as exc:
            raise OutputError(f"{self.folder}: moving the outputs into place failed: {exc.strerror or exc}") from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def final(self, path: Path) -> Path:
        """Where a file written into the staging folder ends up."""
        return self.folder / Path(path).name


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
