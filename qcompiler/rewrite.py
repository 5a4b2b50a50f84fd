"""Rewrite rules and rule-set passes, after onnxscript's rewriter.

A rule anchors on one op type, `match`es a node (returning the captured pieces, or a `Reject`
that says *why* not) and `rewrite`s the match. A `RuleSetPass` applies its rules to every node
until none fires, so a second run changes nothing. Rejections are logged at DEBUG and kept on
the pass (`last_rejections`, beside `last_applied`) to answer "why did my BatchNorm not fold?".
"""

from __future__ import annotations

import abc
import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

from qcompiler.ir import Model, Node
from qcompiler.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)

# A rewrite that keeps creating work is a bug; this bounds the sweeps before we say so.
MAX_SWEEPS = 20


@dataclasses.dataclass(frozen=True)
class Reject:
    """Why a rule did not apply to a node."""

    reason: str


class RewriteRule(abc.ABC):
    """One pattern anchored on `op_type`; `match` returns a dict of captures or a Reject."""

    name: str = ""
    op_type: str = ""

    @abc.abstractmethod
    def match(self, model: Model, node: Node) -> dict[str, Any] | Reject:
        """Check `node` (whose op is `op_type`) and what surrounds it."""

    @abc.abstractmethod
    def rewrite(self, model: Model, node: Node, captures: dict[str, Any]) -> None:
        """Replace the match; leave dead nodes for `Model.finalize` to drop."""


class RuleSetPass(Pass):
    """A pass made of rewrite rules, applied to a fixed point."""

    rules: Sequence[RewriteRule] = ()

    def __init__(self) -> None:
        self.last_rejections: list[tuple[str, str, str]] = []
        self.last_applied: list[tuple[str, str]] = []

    def call(self, model: Model) -> PassResult:
        self.last_rejections, self.last_applied = [], []
        by_op: dict[str, list[RewriteRule]] = {}
        for rule in self.rules:
            by_op.setdefault(rule.op_type, []).append(rule)
        modified = False
        model.analysis[self.display_name] = self.last_applied  # (rule, node) in the order they fired
        for _ in range(MAX_SWEEPS):
            if not self._sweep(model, by_op):
                return PassResult(model, modified)
            modified = True
            model.finalize()
        raise RuntimeError(f"Pass developer: {self.display_name} still rewrites after {MAX_SWEEPS} sweeps")

    def _sweep(self, model: Model, by_op: dict[str, list[RewriteRule]]) -> bool:
        """One pass over the nodes; True if any rule fired."""
        fired = False
        alive = {id(n) for n in model.graph.nodes}
        for node in model.nodes:
            if id(node) not in alive:  # removed by an earlier rewrite in this sweep
                continue
            for rule in by_op.get(node.op, ()):
                captures = rule.match(model, node)
                if isinstance(captures, Reject):
                    self.last_rejections.append((rule.name, node.name, captures.reason))
                    log.debug("%s: %s not applied to %s: %s", self.display_name, rule.name, node.name, captures.reason)
                    continue
                rule.rewrite(model, node, captures)
                self.last_applied.append((rule.name, node.name))
                alive = {id(n) for n in model.graph.nodes}
                log.debug("%s: %s applied to %s", self.display_name, rule.name, node.name)
                fired = True
                break
        return fired
