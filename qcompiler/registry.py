"""The pass registry: names for the CLI, and loading a user's pass from a module or a .py file."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

from qcompiler.errors import UsageError
from qcompiler.pass_infra import Pass

_REGISTRY: dict[str, type[Pass]] = {}


def register(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: make a Pass subclass runnable by `name` (`--passes name`)."""

    def decorate(cls: type[Pass]) -> type[Pass]:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"Pass developer: @register({name!r}) decorates {cls!r}, which is not a Pass subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"Pass developer: the pass name {name!r} is taken by {existing.__module__}."
                             f"{existing.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorate


def registered_passes() -> dict[str, type[Pass]]:
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; a UsageError lists the known names otherwise."""
    if name not in _REGISTRY:
        raise UsageError(f"unknown pass {name!r}; known passes: {', '.join(sorted(_REGISTRY)) or '(none)'}")
    return _REGISTRY[name]


def load_pass(spec: str) -> type[Pass]:
    """Load a pass class from 'path/to/file.py:ClassName' or 'package.module:ClassName'."""
    where, sep, class_name = spec.rpartition(":")
    if not sep or not where or not class_name:
        raise UsageError(f"--pass {spec!r}: expected FILE.py:ClassName or module:ClassName")
    module = _import_file(where) if where.endswith(".py") else _import_module(where)
    cls = getattr(module, class_name, None)
    if cls is None:
        found = sorted(n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, Pass) and v is not Pass)
        raise UsageError(f"--pass {spec!r}: {where} defines no {class_name!r}; Pass classes in it: {found or 'none'}")
    if not (isinstance(cls, type) and issubclass(cls, Pass)):
        raise UsageError(f"--pass {spec!r}: {class_name} is not a subclass of qcompiler.passes.Pass")
    return cls


def _import_file(path_text: str):
    path = Path(path_text)
    if not path.is_file():
        raise UsageError(f"--pass: {path} does not exist")
    # A name unique per file, so two user files that are both called passes.py do not collide.
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"qcompiler_user_pass_{path.stem}_{digest}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report it in one line, not as our traceback
        del sys.modules[name]
        raise UsageError(f"--pass: importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UsageError(f"--pass: cannot import module {name!r}: {exc}") from exc
