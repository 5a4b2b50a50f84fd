"""ONNX's own node conformance tests (Debian's libonnx-testdata) run by the simulator, for the ops
it implements. Each case is a model.onnx with inputs and expected outputs in test_data_set_0.

Inputs that fix shapes (Reshape's shape, Slice's starts, Resize's sizes, ...) are graph inputs in
these tests; the simulator needs them known while tracing, so they become initializers here.
Cases whose ops compute with numpy also run with every input constant, through the static path.
"""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from onnx_node_cases import NODE_DATA, load_case, owners, skip_reason
from qcompiler import ir
from qcompiler.sim import Interpreter
from qcompiler.sim.interpreter import NUMPY_OPS, SHAPE_OF, STATIC_INPUTS
from simcheck import compare, simulate_static

#: Cases left out, by pattern, and why.
SKIPS = [
    ("test_cast*STRING*", "string tensors: the simulator has no string type (by design)"),
    ("test_*string*", "string tensors: the simulator has no string type (by design)"),
    ("test_cast*FLOAT8*", "float8 types: not simulated (by design)"),
    ("test_cast*[Ee]8[Mm]0*", "float8 types: not simulated (by design)"),
    ("test_cast*FLOAT4*", "4-bit types: not simulated (by design)"),
    ("test_cast*INT4*", "4-bit types: not simulated (by design)"),
    ("test_cast*INT2*", "2-bit types: not simulated (by design)"),
    ("test_split_to_sequence*", "SplitToSequence: sequences are not simulated"),
    ("test_cast*_FLOAT_to_BFLOAT16*", "this data truncates to bfloat16; onnxruntime rounds to nearest even, as "
     "the simulator does (checked on these inputs)"),
    ("test_identity_opt", "optional values: not tensors"),
    ("test_identity_sequence", "sequences: not tensors"),
    ("test_training_dropout*", "training-mode Dropout is random; the simulator runs inference"),
    ("test_range_*_expanded", "the expanded Range is a Loop (control flow is not simulated)"),
    ("test_resize_*antialias*", "Resize antialias is not implemented"),
    ("test_resize_downsample_scales_*_align_corners", "align_corners where the output size was rounded down: "
     "ONNX's reference divides by scale * length - 1, onnxruntime (whom the simulator follows) by "
     "the output length - 1"),
]


def _skip_reason(name: str) -> str | None:
    return skip_reason(name, SKIPS)


def _load(folder: Path):
    return load_case(folder, STATIC_INPUTS)


def _group(op: str) -> list[str]:
    return [name for name, owner in owners().items() if owner == op and _skip_reason(name) is None]


def _cases() -> list:
    if not NODE_DATA.is_dir():
        absent = pytest.mark.skip(reason=f"{NODE_DATA} absent (apt package libonnx-testdata)")
        return [pytest.param(None, None, marks=absent)]
    return [pytest.param(op, name, marks=[pytest.mark.skip(reason=_skip_reason(name))] if _skip_reason(name) else [])
            for name, op in owners().items()]


_JIT: dict[str, dict] = {}


def _jit_outputs(op: str) -> dict:
    """The outputs (or the error) of every case of `op`'s group from one jitted function: XLA then
    compiles one program instead of one per case (about 25 rather than 60 ms a case, measured)."""
    if op not in _JIT:
        functions, feeds, results = {}, {}, {}
        for name in _group(op):
            try:
                proto, feeds[name], _ = _load(NODE_DATA / name)
                sim = Interpreter(ir.Model.from_onnx(proto))
                functions[name] = sim.function(list(feeds[name]), [o.name for o in proto.graph.output])
            except Exception as error:  # reported by that case's test
                results[name] = error

        def run(feeds):
            outputs = {}
            for name, function in functions.items():
                try:
                    outputs[name] = function({}, feeds[name])
                except Exception as error:
                    results[name] = error
            return outputs

        results.update(jax.jit(run)({n: feeds[n] for n in functions}))
        _JIT[op] = results
    return _JIT[op]


@pytest.mark.parametrize("op,name", _cases())
def test_onnx_node_case(op, name):
    proto, inputs, expected = _load(NODE_DATA / name)
    outputs = [o.name for o in proto.graph.output]
    result = _jit_outputs(op)[name]
    if isinstance(result, Exception):
        raise result
    runs = {"jit": result}
    if all(n.op_type in NUMPY_OPS | SHAPE_OF | {"Constant"} for n in proto.graph.node):
        runs["static"] = simulate_static(ir.Model.from_onnx(proto), inputs, outputs, name)
    for label, actual in runs.items():
        assert len(actual) == len(expected), label
        for value, wanted, output in zip(actual, expected, outputs):
            compare(value, wanted, f"{name} ({label}) {output}")
