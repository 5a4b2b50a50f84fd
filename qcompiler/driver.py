"""The driver: the one place that wires passes (and, later, backends) into a pipeline."""

from __future__ import annotations

from collections.abc import Sequence

from qcompiler.pass_infra import Pass, PassContext, PassManager


def build_pipeline(passes: Sequence[str | Pass] | None = None, context: PassContext | None = None) -> PassManager:
    """A PassManager over pass names (looked up in the registry) or instances; default pipeline if None."""
    from qcompiler import passes as builtin  # registers the built-in passes

    chosen = builtin.DEFAULT_PIPELINE if passes is None else passes
    instances = [p if isinstance(p, Pass) else builtin.get_pass(p)() for p in chosen]
    return PassManager(instances, context)
