"""Native crashes are contained: the tool says where it crashed, exits 71 and leaves nothing."""

from __future__ import annotations

import hashlib
import json
import os
import signal

import numpy as np

from qcompiler import supervise
from qcompiler.files import OutputSet
from cli_helpers import listing, one_error, qcompiler


def test_a_library_that_crashes_when_loaded(tmp_path, library):
    """A truncated model.so whose model.json was made to match: the loader dies of a signal."""
    broken = tmp_path / "lib"
    broken.mkdir()
    for name, data in listing(library).items():
        (broken / name).write_bytes(data)
    truncated = (library / "model.so").read_bytes()[:100_000]
    (broken / "model.so").write_bytes(truncated)
    meta = json.loads((broken / "model.json").read_text())
    meta["library_sha256"] = hashlib.sha256(truncated).hexdigest()
    (broken / "model.json").write_text(json.dumps(meta))
    np.savez(tmp_path / "x.npz", input=np.zeros((1, 1, 28, 28), np.float32))
    result = qcompiler("run", broken, "--input", tmp_path / "x.npz", "-o", tmp_path / "y.npz")
    if result.code == 3:   # the loader may also refuse it cleanly; either way it must not die silently
        one_error(result, 3, "model.so")
    else:
        one_error(result, supervise.CRASH_EXIT_CODE, "crashed in loading the library", "signal")
    assert not (tmp_path / "y.npz").exists()


def _crash_while_writing(folder):
    with OutputSet(folder, ["a.txt"]).staging() as stage:
        (stage / "a.txt").write_text("half")
        with supervise.stage("a native library"):
            os.kill(os.getpid(), signal.SIGSEGV)
    return 0


def test_the_supervisor_reports_the_stage_and_removes_the_staging_folder(tmp_path, capfd):
    code = supervise.run_supervised(lambda: _crash_while_writing(tmp_path))
    err = capfd.readouterr().err
    assert code == supervise.CRASH_EXIT_CODE
    assert "crashed in a native library (signal 11, SIGSEGV); no output written" in err
    assert list(tmp_path.iterdir()) == []


def test_the_supervisor_passes_the_exit_code_through(tmp_path):
    assert supervise.run_supervised(lambda: 6) == 6
    assert supervise.run_supervised(lambda: 0) == 0


def _bug():
    raise ValueError("a bug of ours")


def test_a_traceback_raised_in_the_child_is_printed(capfd):
    """`--debug` re-raises an internal error for its traceback: the child must print it before
    os._exit, which would otherwise end the process silently with exit code 70."""
    code = supervise.run_supervised(_bug)
    err = capfd.readouterr().err
    assert code == 70
    assert "Traceback" in err and "ValueError: a bug of ours" in err, err


def _user_error():
    from qcompiler.errors import UsageError

    raise UsageError("a usage error, re-raised by --debug")


def _interrupt():
    raise KeyboardInterrupt


def test_the_child_keeps_exit_codes_of_errors_and_interrupts_it_did_not_handle(capfd):
    """`--debug` re-raises a user error: its traceback, and its own exit code (not 70); an
    interrupt before the command's handler (while importing) is the one line and 130."""
    assert supervise.run_supervised(_user_error) == 2
    assert "UsageError: a usage error" in capfd.readouterr().err
    assert supervise.run_supervised(_interrupt) == supervise.INTERRUPT_EXIT_CODE
    err = capfd.readouterr().err
    assert err.strip() == supervise.INTERRUPTED_LINE and "Traceback" not in err
