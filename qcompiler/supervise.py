"""Native crashes are contained: the `qcompiler` command runs in a child process, watched.

onnx's checker, onnxruntime, TVM's build and a compiled library are native code; a crash there
(SIGSEGV, SIGBUS, SIGILL) kills the process before Python can say anything. So the command
runs in a forked child, and the parent, which has imported nothing heavy, waits for it. The
child tells the parent over a pipe which stage it is in and which staging folder it is
writing; if it dies of a signal the parent removes that folder and says, in one line, where it
crashed (exit code 71). It costs about 30 ms a command (measured on `--version`: 0.217 s
against 0.189 s), the fork happening before numpy or onnx are imported.

Ctrl-C: the parent forwards SIGINT and SIGTERM to the child. The child raises
KeyboardInterrupt at the first one and notes it, so that an interrupt that native code
swallowed still stops the command before its outputs are committed (`raise_if_interrupted`);
later ones are ignored while it cleans up. A child that finished (its exit code sent) and
then dies while the interpreter shuts down returns that code.

The child ends with os._exit after running the exit handlers, so that nothing after the
command (a caller's frames, the interpreter's teardown of native libraries) runs in it.

`QCOMPILER_NO_SUPERVISE=1` runs the command in the one process (for debuggers).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

CRASH_EXIT_CODE = 71
INTERRUPT_EXIT_CODE = 130
INTERRUPTED_LINE = "qcompiler: interrupted; no partial output was left"

_pipe: int | None = None          # the child's end; None when not supervised
_stage = "qcompiler"
_interrupted = False


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark a stage of native work, for the crash message ("crashed in NAME")."""
    global _stage
    previous, _stage = _stage, name
    _send(f"stage {name}")
    try:
        yield
    finally:
        _stage = previous
        _send(f"stage {previous}")


def note_staging(path: Path | None) -> None:
    """The staging folder being written (None: none), for the parent to remove after a crash."""
    _send(f"staging {path if path is not None else ''}")


def interrupted() -> bool:
    """Whether SIGINT/SIGTERM arrived (also where native code turned the KeyboardInterrupt into another error)."""
    return _interrupted


def raise_if_interrupted() -> None:
    if _interrupted:
        raise KeyboardInterrupt


def _send(line: str) -> None:
    if _pipe is None:
        return
    for stream in (sys.stdout, sys.stderr):   # what was printed before a crash is not lost
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):
        os.write(_pipe, (line.replace("\n", " ") + "\n").encode("utf-8", "replace"))


def handle_interrupts() -> None:
    """SIGINT and SIGTERM raise KeyboardInterrupt once and are remembered (main thread only)."""
    import threading

    if threading.current_thread() is threading.main_thread():
        for s in (signal.SIGINT, signal.SIGTERM):
            signal.signal(s, _on_interrupt)


@contextlib.contextmanager
def interrupts_noted() -> Iterator[None]:
    """handle_interrupts within the block, the caller's handlers restored after it (the CLI's
    main is also called in-process, from tests and from the demo, nested)."""
    import threading

    global _interrupted
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    if previous[signal.SIGINT] is not _on_interrupt:
        _interrupted = False   # a fresh command (not one nested in another)
    handle_interrupts()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _on_interrupt(signum, frame) -> None:
    global _interrupted
    if not _interrupted:
        _interrupted = True
        raise KeyboardInterrupt


def run_supervised(command: Callable[[], int]) -> int:
    """Run `command` in a child process; its exit code, or 71 with one line if it crashed."""
    if os.environ.get("QCOMPILER_NO_SUPERVISE") or not hasattr(os, "fork"):
        return command()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(command, read_end, write_end)
    os.close(write_end)
    forward = lambda signum, frame: _kill(pid, signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        report = _read_reports(read_end)
        _, status = os.waitpid(pid, 0)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return _outcome(status, report)


def _child(command: Callable[[], int], read_end: int, write_end: int) -> None:
    global _pipe
    os.close(read_end)
    _pipe = write_end
    handle_interrupts()
    code = 70
    try:
        code = command()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:   # before the command's own handler (while importing, say)
        print(INTERRUPTED_LINE, file=sys.stderr)
        code = INTERRUPT_EXIT_CODE
    except BaseException as exc:   # noqa: BLE001 - re-raised by `--debug`: os._exit below would swallow it unprinted
        traceback.print_exc()
        code = getattr(exc, "exit_code", 70)
    finally:
        _send(f"done {code}")
        # The child never returns into its caller's code (under pytest that would run the rest
        # of the session twice): it runs the exit handlers (temporary folders) and leaves.
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code if isinstance(code, int) and 0 <= code < 256 else 70)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _read_reports(fd: int) -> dict:
    """The child's last stage, staging folder and exit code, read until it closes the pipe."""
    report = {"stage": "qcompiler", "staging": "", "done": None}
    buffer = b""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while chunk := pipe.read(4096):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                key, _, value = line.decode("utf-8", "replace").partition(" ")
                report[key] = int(value) if key == "done" else value
    return report


def _outcome(status: int, report: dict) -> int:
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    if report["done"] is not None:   # finished, then died in the interpreter's shutdown
        return report["done"]
    signum = os.WTERMSIG(status)
    if report["staging"]:
        import shutil

        shutil.rmtree(report["staging"], ignore_errors=True)
    if signum in (signal.SIGINT, signal.SIGTERM):
        print(INTERRUPTED_LINE, file=sys.stderr)
        return INTERRUPT_EXIT_CODE
    name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else "unknown"
    hint = " (killed: perhaps out of memory)" if signum == signal.SIGKILL else ""
    print(f"qcompiler: crashed in {report['stage']} (signal {signum}, {name}){hint}; no output written",
          file=sys.stderr)
    return CRASH_EXIT_CODE
