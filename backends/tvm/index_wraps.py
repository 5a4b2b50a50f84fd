"""Drop the negative-index wrap that TVM's ONNX importer puts on every Gather when the index
cannot be negative.

The importer reads Gather(data, i) as take(data, where(i < 0, i + len(data), i)), with
len(data) computed as shape_of -> shape_to_tensor -> take -> astype. For a lookup table
(lookup_tables.py) the index is an 8-bit code cast to int32, plus 128 for int8 codes: never
negative. Left in, constant folding compiles and runs a small kernel for each of those calls,
about 0.15 s per table: a 400-layer chain of table lookups spent 62 s there (measured), and
the build time grew with every layer. Proving the index non-negative from its dtype and the
added constant removes the wrap, and dead-code elimination the length computation.

The importer's take also reads out of range indices as undefined ("fast" mode), and TVM warns
about it on every one it lowers: a user compiling EfficientNet saw 41 such lines, one per
table. `clip_takes` makes each take clamp its indices instead: the same result for every valid
index (the importer has already wrapped the negative ones), two vector min/max more per element.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

#: The smallest value of each integer dtype an index may be cast from.
_LOWEST = {"uint8": 0, "uint16": 0, "uint32": 0, "int8": -128, "int16": -32768}


def drop_index_wraps(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every provably unneeded negative-index wrap removed (then dead code). One
    visit of each binding: TVM's pattern rewriter (rewrite_call) took 25 s on 1500 wraps."""
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            func = _DropWraps().visit_expr(func)
            mod[gvar] = _DropBindings(_dead(func)).visit_expr(func)
    return mod


def clip_takes(mod: tvm.IRModule) -> tvm.IRModule:
    """`mod` with every take in "fast" mode (out of range: undefined) in "clip" mode instead."""
    for gvar, func in list(mod.functions.items()):
        if isinstance(func, relax.Function):
            mod[gvar] = _ClipTakes().visit_expr(func)
    return mod


@relax.expr_functor.mutator
class _ClipTakes(relax.PyExprMutator):
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != _op("take") or call.attrs.mode != "fast":
            return call
        return relax.op.take(call.args[0], call.args[1], call.attrs.axis, mode="clip")


def _dead(func: relax.Function) -> set:
    """Dataflow bindings nothing reads, directly or through other dead ones: one backward sweep.
    (TVM's DeadCodeElimination took 9 s on the 1500-table chain, growing faster than the model.)"""
    used = set(relax.analysis.free_vars(func.body.body))
    dead = set()
    for block in reversed(func.body.blocks):
        for binding in reversed(block.bindings):
            if isinstance(block, relax.DataflowBlock) and binding.var not in used:
                dead.add(binding.var)
            else:
                used.update(relax.analysis.free_vars(binding.value))
    return dead


@relax.expr_functor.mutator
class _DropBindings(relax.PyExprMutator):
    def __init__(self, dead: set) -> None:
        super().__init__()
        self.dead = dead

    def visit_var_binding_(self, binding) -> None:
        if binding.var not in self.dead:
            super().visit_var_binding_(binding)


@relax.expr_functor.mutator
class _DropWraps(relax.PyExprMutator):
    """where(i < 0, i + n, i) -> i, where i is astype(x) or astype(x) + constant and provably >= 0."""

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if call.op != _op("where") or len(call.args) != 3:
            return call
        condition, wrapped, index = (self._bound(a) for a in call.args)
        if not (_is(condition, "less") and _is(wrapped, "add") and _same(condition.args[0], call.args[2])
                and _same(wrapped.args[0], call.args[2])):
            return call
        return call.args[2] if self._lowest(index) >= 0 else call

    def _bound(self, expr: relax.Expr) -> relax.Expr:
        """What a dataflow var is bound to (the expression itself when it is not a var)."""
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            return bound if bound is not None else expr
        return expr

    def _lowest(self, index: relax.Expr) -> float:
        """A lower bound of astype(x) or astype(x) + constant, from x's dtype; -inf if unknown."""
        shift = 0.0
        if _is(index, "add") and isinstance(index.args[1], relax.Constant):
            constant = index.args[1].data.numpy()
            shift = float(constant.min()) if constant.size else -np.inf
            index = self._bound(index.args[0])
        if not _is(index, "astype"):
            return -np.inf
        return _LOWEST.get(str(getattr(index.args[0].ty, "dtype", "")), -np.inf) + shift


def _op(name: str):
    return tvm.ir.Op.get(f"relax.{name}")


def _is(expr: relax.Expr, name: str) -> bool:
    return isinstance(expr, relax.Call) and expr.op == _op(name)


def _same(a: relax.Expr, b: relax.Expr) -> bool:
    return a.same_as(b)
