"""Helpers for checking passes against onnxruntime: one tolerance rule, derived from the dtype.

A float-preserving pass changes the order of rounding (a folded weight is rounded once where
the original rounded twice), so outputs differ by a few units in the last place per layer.
`tolerance` allows `ULPS` units of the dtype's epsilon relative to the output's magnitude,
which is enough for a 50-layer net in float32 (measured: under 1e-5 relative on ResNet-50)
and still fails on any real error: a wrong channel or a missed bias moves outputs by percents.
"""

from __future__ import annotations

import numpy as np

from qcompiler.executor import session
from qcompiler.ir import Model

# 2**10 units of epsilon: 1.2e-4 relative in float32, 0.98 relative in float16 (unusable there:
# float16 models should be compared with float32 references, not with this rule).
ULPS = 1024


def tolerance(dtype: np.dtype | type) -> float:
    """Relative tolerance for outputs of a float-preserving transformation in `dtype`."""
    return ULPS * float(np.finfo(dtype).eps)


def assert_close(actual: np.ndarray, expected: np.ndarray, dtype=np.float32, what: str = "output") -> None:
    """|actual - expected| <= tol * max(|expected|, 1e-30) everywhere, with tol from the dtype."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(float(np.abs(expected).max(initial=0.0)), 1e-30)
    err = float(np.abs(actual - expected).max(initial=0.0)) / scale
    assert err <= tolerance(dtype), f"{what}: max error {err:.3g} of max|expected| exceeds {tolerance(dtype):.3g}"


def run(model: Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run `model` in onnxruntime with graph optimizations off (so ORT does not fold BN itself)."""
    return session(model, optimize=False).run(None, feeds)


def random_inputs(model: Model, seed: int = 0, batch: int = 2) -> dict[str, np.ndarray]:
    """Standard-normal float inputs for every graph input; symbolic dimensions become `batch`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in model.graph.inputs:
        shape = [d if isinstance(d, int) and d > 0 else batch for d in tensor.shape]
        feeds[tensor.name] = rng.standard_normal(shape).astype(tensor.dtype)
    return feeds


def randomize_weights(model: Model, seed: int = 0) -> Model:
    """Give layers He-scaled random weights and BNs random statistics, in place.

    Test-zoo models ship constant-valued weights; with those a pass that mixes up channels
    still matches. Random per-channel values make every channel distinguishable.
    """
    rng = np.random.default_rng(seed)
    for node in model.graph.nodes:
        if node.op in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            _randomize(model, node, 1, lambda v: rng.standard_normal(v.shape) * np.sqrt(2.0 / max(v.size / v.shape[0], 1)))
            _randomize(model, node, 2, lambda v: 0.1 * rng.standard_normal(v.shape))
        elif node.op == "BatchNormalization":
            _randomize(model, node, 1, lambda v: rng.uniform(0.5, 1.5, v.shape))
            _randomize(model, node, 2, lambda v: 0.2 * rng.standard_normal(v.shape))
            _randomize(model, node, 3, lambda v: 0.2 * rng.standard_normal(v.shape))
            _randomize(model, node, 4, lambda v: rng.uniform(0.5, 2.0, v.shape))
    return model


def _randomize(model: Model, node, index: int, make) -> None:
    tensor = model.input_or_none(node, index)
    value = model.const_value(tensor)
    if value is not None and value.dtype.kind == "f" and value.ndim >= 1:
        model.set_const_input(node, index, make(value).astype(value.dtype))
