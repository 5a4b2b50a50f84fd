"""The `qcompiler` command (and `python -m qcompiler`): the CLI, run in a supervised child
process (qcompiler.supervise) so that a crash in native code is reported, not silent. This
module imports nothing heavy: the parent process only forks and waits."""

from __future__ import annotations

import sys

from qcompiler.supervise import run_supervised


def _command() -> int:
    from qcompiler.cli import main

    return main()


def entry() -> None:
    sys.exit(run_supervised(_command))


if __name__ == "__main__":
    entry()
