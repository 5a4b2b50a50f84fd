"""One error hierarchy; each class carries its CLI exit code (docs/architecture.md, conventions).

Messages name the file, node or tensor at fault and say what to do about it.
"""

from __future__ import annotations


class QCompilerError(Exception):
    """Base of every error qcompiler raises on purpose (a user-facing problem)."""

    exit_code = 70


class UsageError(QCompilerError):
    """The command line or an API call was used wrongly."""

    exit_code = 2


class InvalidModelError(QCompilerError):
    """The model file is unreadable, malformed or unsafe (e.g. external data outside its folder)."""

    exit_code = 3


class UnsupportedModelError(QCompilerError):
    """The model is valid ONNX but uses something qcompiler does not handle (ops, opsets)."""

    exit_code = 4


class CalibrationDataError(QCompilerError):
    """Calibration or evaluation data is missing, malformed or does not fit the model."""

    exit_code = 5


class OutputError(QCompilerError):
    """An output file or directory cannot be written."""

    exit_code = 6


class RemoteDeviceError(QCompilerError):
    """A remote device (TVM RPC) could not be reached or failed."""

    exit_code = 7


class PassError(QCompilerError):
    """A pass broke a contract (its requires/ensures checks, or verification after it)."""

    exit_code = 70
