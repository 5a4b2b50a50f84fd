"""ONNX's own node conformance tests (Debian's libonnx-testdata, data/node) for the ops the
corpus of exported models contains: which cases, and how to read one. Run by the simulator
(tests/sim/test_sim_onnx_node.py) and by the TVM backend's float path
(tests/backends/test_fallback_onnx_node.py)."""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import numpy_helper

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


def skip_reason(name: str, skips: list[tuple[str, str]]) -> str | None:
    return next((why for pattern, why in skips if fnmatch.fnmatchcase(name, pattern)), None)


@functools.cache
def owners() -> dict[str, str]:
    """Each case's name -> the op whose patterns match it first."""
    owner = {}
    for op, patterns in PATTERNS.items():
        for pattern in patterns:
            for path in sorted(NODE_DATA.glob(pattern)):
                owner.setdefault(path.name, op)
    return owner


def read_tensor(path: Path, elem_type: int) -> np.ndarray:
    """A tensor file; bfloat16 ones (uint16 bit patterns in older test data, or onnx's own
    bfloat16 type before it used ml_dtypes) read as ml_dtypes.bfloat16."""
    value = numpy_helper.to_array(onnx.load_tensor(str(path)))
    if elem_type == onnx.TensorProto.BFLOAT16 and value.dtype != ml_dtypes.bfloat16:
        return value.view(np.uint16).view(ml_dtypes.bfloat16)
    return value


def load_case(folder: Path, static_inputs: dict) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[np.ndarray]]:
    """The model with the graph inputs that `static_inputs` (op -> input indices) names made
    initializers, its other inputs, its expected outputs."""
    proto = onnx.load(str(folder / "model.onnx"))
    data = folder / "test_data_set_0"
    initializers = {i.name for i in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in initializers]
    declared = {v.name: v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    values = {n: read_tensor(data / f"input_{k}.pb", declared[n]) for k, n in enumerate(names)}
    expected = [read_tensor(data / f"output_{k}.pb", declared[o.name]) for k, o in enumerate(proto.graph.output)]
    static = {node.input[i] for node in proto.graph.node for i in static_inputs.get(node.op_type, ())
              if i < len(node.input)}
    proto.graph.initializer.extend(numpy_helper.from_array(values.pop(n), n) for n in names if n in static)
    kept = [i for i in proto.graph.input if i.name in values or i.name in initializers]
    del proto.graph.input[:]
    proto.graph.input.extend(kept)
    return proto, values, expected
