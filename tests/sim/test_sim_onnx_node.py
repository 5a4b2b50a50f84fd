"""ONNX's own node conformance tests (Debian's libonnx-testdata) run by the simulator, for the ops
it implements. Each case is a model.onnx with inputs and expected outputs in test_data_set_0.

Inputs that fix shapes (Reshape's shape, Slice's starts, Resize's sizes, ...) are graph inputs in
these tests; the simulator needs them known while tracing, so they become initializers here.
Cases whose ops compute with numpy also run with every input constant, through the static path.
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path

import jax
import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from qcompiler import ir
from qcompiler.sim import Interpreter
from qcompiler.sim.interpreter import NUMPY_OPS, SHAPE_OF, STATIC_INPUTS
from simcheck import compare, simulate_static

NODE_DATA = Path("/usr/share/libonnx-testdata/data/node")

#: The node tests run, as folder-name patterns per op ("_expanded" cases: the op as a function of
#: others, e.g. LayerNormalization through Shape, Slice, ConstantOfShape, Concat and Reshape).
PATTERNS = {
    "Shape": ["test_shape*"], "Size": ["test_size*"], "Flatten": ["test_flatten_*"], "Reshape": ["test_reshape_*"],
    "Squeeze": ["test_squeeze*"], "Unsqueeze": ["test_unsqueeze*"], "Concat": ["test_concat_*"],
    "Gather": ["test_gather_[0-9]*", "test_gather_2d_indices", "test_gather_negative_indices"],
    "Slice": ["test_slice*"], "Cast": ["test_cast_*"], "CastLike": ["test_castlike_*"], "Split": ["test_split_*"],
    "Expand": ["test_expand_*"], "Tile": ["test_tile*"], "Where": ["test_where_*"],
    "Equal": ["test_equal*"], "Less": ["test_less*"], "Greater": ["test_greater*"], "Not": ["test_not_*"],
    "And": ["test_and*"], "Or": ["test_or*"], "Xor": ["test_xor*"],
    "Min": ["test_min_*"], "Max": ["test_max_*"], "Sum": ["test_sum_*"], "Mean": ["test_mean_*"],
    "Reduce*": ["test_reduce_*"], "ArgMax": ["test_argmax_*"], "ArgMin": ["test_argmin_*"],
    "Pow": ["test_pow*"], "Sqrt": ["test_sqrt*"], "Reciprocal": ["test_reciprocal*"], "Exp": ["test_exp", "test_exp_*"],
    "Log": ["test_log", "test_log_example"], "Erf": ["test_erf"], "Neg": ["test_neg", "test_neg_example"],
    "Abs": ["test_abs"],
    "Floor": ["test_floor*"], "Ceil": ["test_ceil*"], "Round": ["test_round"],
    "Sigmoid": ["test_sigmoid*"], "HardSwish": ["test_hardswish*"], "Softplus": ["test_softplus*"],
    "Elu": ["test_elu*"], "Selu": ["test_selu*"], "PRelu": ["test_prelu_*"], "Gelu": ["test_gelu_*"],
    "Mish": ["test_mish*"], "Swish": ["test_swish*"], "Softmax": ["test_softmax_*"],
    "LogSoftmax": ["test_logsoftmax_*"],
    "LayerNormalization": ["test_layer_normalization_*"], "InstanceNormalization": ["test_instancenorm_*"],
    "GlobalMaxPool": ["test_globalmaxpool*"], "MatMul": ["test_matmul_[0-9]d"],
    "Resize": ["test_resize_*"], "Upsample": ["test_upsample_*"],
    "DepthToSpace": ["test_depthtospace_*"], "SpaceToDepth": ["test_spacetodepth*"],
    "Range": ["test_range_*"], "ConstantOfShape": ["test_constantofshape_*"],
    "Identity": ["test_identity*"], "Dropout": ["test_dropout_*", "test_training_dropout*"],
}

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
    return next((why for pattern, why in SKIPS if fnmatch.fnmatchcase(name, pattern)), None)


@functools.cache
def _matches() -> dict[str, str]:
    """Each case's name -> the op whose patterns match it first."""
    owner = {}
    for op, patterns in PATTERNS.items():
        for pattern in patterns:
            for path in sorted(NODE_DATA.glob(pattern)):
                owner.setdefault(path.name, op)
    return owner


def _group(op: str) -> list[str]:
    return [name for name, owner in _matches().items() if owner == op and _skip_reason(name) is None]


def _cases() -> list:
    if not NODE_DATA.is_dir():
        absent = pytest.mark.skip(reason=f"{NODE_DATA} absent (apt package libonnx-testdata)")
        return [pytest.param(None, None, marks=absent)]
    return [pytest.param(op, name, marks=[pytest.mark.skip(reason=_skip_reason(name))] if _skip_reason(name) else [])
            for name, op in _matches().items()]


def _read(path: Path, elem_type: int) -> np.ndarray:
    """A tensor file; bfloat16 ones (uint16 bit patterns in older test data, or onnx's own
    bfloat16 type before it used ml_dtypes) read as ml_dtypes.bfloat16."""
    value = numpy_helper.to_array(onnx.load_tensor(str(path)))
    if elem_type == onnx.TensorProto.BFLOAT16 and value.dtype != ml_dtypes.bfloat16:
        return value.view(np.uint16).view(ml_dtypes.bfloat16)
    return value


def _load(folder: Path) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[np.ndarray]]:
    """The model with its shape-fixing graph inputs made initializers, its other inputs, its expected outputs."""
    proto = onnx.load(str(folder / "model.onnx"))
    data = folder / "test_data_set_0"
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    declared = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    values = {n: _read(data / f"input_{k}.pb", declared[n]) for k, n in enumerate(names)}
    expected = [_read(data / f"output_{k}.pb", declared[o.name]) for k, o in enumerate(proto.graph.output)]
    static = {node.input[i] for node in proto.graph.node for i in STATIC_INPUTS.get(node.op_type, ())
              if i < len(node.input)}
    proto.graph.initializer.extend(numpy_helper.from_array(values.pop(n), n) for n in names if n in static)
    kept = [i for i in proto.graph.input if i.name in values or i.name in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    return proto, values, expected


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
