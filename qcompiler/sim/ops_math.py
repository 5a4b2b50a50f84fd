"""Arithmetic, comparisons, elementwise functions and reductions with ONNX semantics, in numpy
or jax.numpy (qcompiler.sim.arrays): numpy when every input is numpy, so that arithmetic on
shapes stays static. Erf alone always computes in jax (numpy has none)."""

from __future__ import annotations

import functools
import math

import numpy as np
from jax.scipy.special import erf

from qcompiler.sim.arrays import astype, axes_of, is_float, xp


def _elementwise(name: str):
    """The numpy / jax.numpy function `name` over the inputs, which broadcast."""

    def op(*xs):
        return (getattr(xp(*xs), name)(*xs),)

    return op


def _variadic(name: str):
    """Sum, Min, Max: the binary function folded over any number of broadcasting inputs."""

    def op(*xs):
        return (functools.reduce(getattr(xp(*xs), name), xs),)

    return op


def mean(*xs):
    return (_variadic("add")(*xs)[0] / len(xs),)


def div(a, b):
    """Integer Div truncates toward zero (C's /, as onnxruntime computes it), not down."""
    m = xp(a, b)
    if is_float(a.dtype):
        return (m.divide(a, b),)
    return ((m.abs(a) // m.abs(b)) * m.sign(a) * m.sign(b),)


def power(a, b):
    """Pow's result has the base's type (an integer base with a float exponent stays integer)."""
    return (astype(xp(a, b).power(a, b), a.dtype),)


def reciprocal(x):
    return (1 / x,)


def _reduce(reducer):
    """A ReduceXxx op: axes as an input (ReduceSum >= 13, the others >= 18) or an attribute;
    no axes (or an empty axes input) reduces over all, or with noop_with_empty_axes over none
    (which leaves ReduceL1 |x|, ReduceSumSquare x * x, ...: onnxruntime and ONNX's reference agree).
    The result keeps the input's type (numpy would widen small integers)."""

    def op(x, axes=None, keepdims=1, noop_with_empty_axes=0):
        axes = axes_of(axes, None)
        if not axes:
            axes = () if noop_with_empty_axes else range(x.ndim)
        axes = tuple(sorted({a % x.ndim for a in axes}))
        return (astype(reducer(xp(x), x, axes, bool(keepdims)), x.dtype),)

    return op


def _bound(dtype, upper: bool):
    """The type's largest (upper) or smallest value."""
    if is_float(dtype):
        return np.inf if upper else -np.inf
    if dtype == np.bool_:
        return upper
    return np.iinfo(dtype).max if upper else np.iinfo(dtype).min


def _extreme(name: str):
    """ReduceMax / ReduceMin; over an empty set the type's smallest / largest value (-inf / inf), as
    onnxruntime gives (numpy refuses)."""

    def reduce(m, x, axes, keepdims):
        start = {} if x.size else {"initial": _bound(x.dtype, upper=name == "min")}
        return getattr(m, name)(x, axis=axes, keepdims=keepdims, **start)

    return reduce


def _mean(m, x, axes, keepdims):
    """The mean; 0 over an empty set, as onnxruntime (numpy: nan)."""
    return m.sum(x, axis=axes, keepdims=keepdims) / max(math.prod(x.shape[a] for a in axes), 1)


def _log_sum_exp(m, x, axes, keepdims):
    """log(sum(exp(x))) shifted by the maximum, so that large inputs do not overflow."""
    top = _extreme("max")(m, x, axes, True)
    top = m.where(m.isfinite(top), top, 0.0)
    y = m.log(m.sum(m.exp(x - top), axis=axes, keepdims=True)) + top
    return y if keepdims else y.squeeze(axes)


REDUCERS = {
    "ReduceSum": lambda m, x, axes, keep: m.sum(x, axis=axes, keepdims=keep),
    "ReduceMean": _mean,
    "ReduceMax": _extreme("max"),
    "ReduceMin": _extreme("min"),
    "ReduceProd": lambda m, x, axes, keep: m.prod(x, axis=axes, keepdims=keep),
    "ReduceL1": lambda m, x, axes, keep: m.sum(m.abs(x), axis=axes, keepdims=keep),
    "ReduceL2": lambda m, x, axes, keep: m.sqrt(m.sum(x * x, axis=axes, keepdims=keep)),
    "ReduceSumSquare": lambda m, x, axes, keep: m.sum(x * x, axis=axes, keepdims=keep),
    "ReduceLogSum": lambda m, x, axes, keep: m.log(m.sum(x, axis=axes, keepdims=keep)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _arg(name: str):
    """ArgMax / ArgMin; select_last_index: the last of equal extremes (search the reversed axis)."""

    def op(x, axis=0, keepdims=1, select_last_index=0):
        m = xp(x)
        axis = axis % x.ndim
        found = getattr(m, name)(m.flip(x, axis) if select_last_index else x, axis=axis, keepdims=bool(keepdims))
        return (astype(x.shape[axis] - 1 - found if select_last_index else found, np.int64),)

    return op


MATH_OPS = {
    "Add": _elementwise("add"),
    "Sub": _elementwise("subtract"),
    "Mul": _elementwise("multiply"),
    "Div": div,
    "Pow": power,
    "Sum": _variadic("add"),
    "Mean": mean,
    "Min": _variadic("minimum"),
    "Max": _variadic("maximum"),
    "Equal": _elementwise("equal"),
    "Less": _elementwise("less"),
    "LessOrEqual": _elementwise("less_equal"),
    "Greater": _elementwise("greater"),
    "GreaterOrEqual": _elementwise("greater_equal"),
    "Not": _elementwise("logical_not"),
    "And": _elementwise("logical_and"),
    "Or": _elementwise("logical_or"),
    "Xor": _elementwise("logical_xor"),
    "Where": _elementwise("where"),
    "Neg": _elementwise("negative"),
    "Abs": _elementwise("abs"),
    "Floor": _elementwise("floor"),
    "Ceil": _elementwise("ceil"),
    "Round": _elementwise("round"),  # half to even, as ONNX
    "Sqrt": _elementwise("sqrt"),
    "Exp": _elementwise("exp"),
    "Log": _elementwise("log"),
    "Reciprocal": reciprocal,
    "Erf": lambda x: (erf(x),),
    "ArgMax": _arg("argmax"),
    "ArgMin": _arg("argmin"),
    **{op: _reduce(fn) for op, fn in REDUCERS.items()},
}

#: Reductions take their axes as input 1 (by opset); those fix the output shape.
MATH_STATIC_INPUTS = {op: (1,) for op in REDUCERS}
