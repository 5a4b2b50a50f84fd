"""ONNX's own node conformance tests (Debian's libonnx-testdata) through the TVM backend's float
path: what runs between a DequantizeLinear and a QuantizeLinear when an op has no integer
kernel. Each case's model is loaded as `qcompiler` loads models (opsets converted where the
importer needs it), built for this host by the same build as a QDQ model (nothing is quantized,
so every op runs in float), run on the case's inputs and compared with ONNX's expected outputs.

A case the backend refuses (exit 4: backends/tvm/build.unconvertible_ops) must be listed in
REFUSED with the reason: refusing is the product's answer where TVM's importer would compute
something else, and the list keeps that honest (a case refused without being listed fails, and
so does a listed one that builds).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

from onnx_node_cases import NODE_DATA, load_case, owners, skip_reason
from qcompiler import ir
from qcompiler.compiler import compile_qdq
from qcompiler.errors import UnsupportedModelError
from qcompiler.ir.load import convert_opset
from qcompiler.sim.interpreter import STATIC_INPUTS
from qcompiler.testing import assert_close

#: Inputs that are constants in the models users bring (weights of a normalization, an exponent,
#: shapes): TVM's importer needs them constant, as the simulator does shape inputs.
STATIC = {**STATIC_INPUTS, "InstanceNormalization": (1, 2), "LayerNormalization": (1, 2)}

#: Cases left out, by pattern, and why.
SKIPS = [
    ("test_*string*", "string tensors: no string type in an integer library (by design)"),
    ("test_cast*STRING*", "string tensors: no string type in an integer library (by design)"),
    ("test_cast*FLOAT8*", "float8 types: not supported (by design)"),
    ("test_cast*[Ee]8[Mm]0*", "float8 types: not supported (by design)"),
    ("test_cast*FLOAT4*", "4-bit float types: not supported (by design)"),
    ("test_cast*INT4*", "4-bit types as tensors: weights are packed by the backend itself"),
    ("test_cast*INT2*", "2-bit types as tensors: weights are packed by the backend itself"),
    ("test_cast*BFLOAT16*", "bfloat16: the TVM CPU build computes NaN for it; models in bfloat16 are out of scope"),
    ("test_castlike*BFLOAT16*", "bfloat16: the TVM CPU build computes NaN for it; models in bfloat16 are out of scope"),
    ("test_split_to_sequence*", "sequences: not tensors"),
    ("test_identity_opt", "optional values: not tensors"),
    ("test_identity_sequence", "sequences: not tensors"),
    ("test_training_dropout*", "training-mode Dropout is random; a library runs inference"),
    ("test_range_*_expanded", "the expanded Range is a Loop (control flow is not supported)"),
    ("test_resize_*antialias*", "Resize antialias: not supported"),
    ("test_resize_downsample_scales_*_align_corners", "the simulator's reason: ONNX's reference and onnxruntime "
     "(the product's reference) differ on this case"),
    ("test_split_zero_size_splits", "zero-size tensors: not supported"),
    ("test_reshape_allowzero_reordered", "zero-size tensors: not supported"),
    ("test_slice_start_out_of_bounds", "an empty slice (zero-size tensor): not supported"),
]

#: Cases the backend refuses (exit 4), and why (backends/tvm/build.misconverted_nodes).
REFUSED = [
    ("test_layer_normalization_*_mean_outputs", "TVM returns scalars for LayerNormalization's Mean and InvStdDev"),
    ("test_resize_downsample_scales_linear", "scales 0.6 of 2x4: TVM computes from the output size, ONNX from the scale"),
    ("test_resize_downsample_scales_cubic*", "scales 0.8 of 4x4: TVM computes from the output size, ONNX from the scale"),
    ("test_resize_downsample_scales_nearest", "scales 0.6 of 2x4: right here by rounding, 154 LSB off on a 16x16 "
     "input in a model (the same cause)"),
    ("test_pow_types_*", "TVM's power takes two floats of one type"),
]
MEAN_OUTPUTS = "test_layer_normalization_2d_axis0"   # run with all three outputs: refused


def _cases() -> list:
    if not NODE_DATA.is_dir():
        absent = pytest.mark.skip(reason=f"{NODE_DATA} absent (apt package libonnx-testdata)")
        return [pytest.param(None, None, marks=absent)]
    cases = [pytest.param(op, name, marks=[pytest.mark.skip(reason=skip_reason(name, SKIPS))]
                          if skip_reason(name, SKIPS) else []) for name, op in owners().items()]
    return cases + [pytest.param("LayerNormalization", f"{MEAN_OUTPUTS}_mean_outputs")]


def _model(name: str):
    """(the case's model as qcompiler loads it, its inputs, the expected outputs). LayerNormalization's
    cases keep only Y (models read Mean and InvStdDev, if ever, in training), except the one that
    checks the refusal of the other two."""
    folder = name.removesuffix("_mean_outputs")
    proto, inputs, expected = load_case(NODE_DATA / folder, STATIC)
    proto.ir_version = max(proto.ir_version, 4)   # initializers that are not graph inputs (IR 4 on)
    if proto.graph.node[0].op_type == "LayerNormalization" and not name.endswith("_mean_outputs"):
        del proto.graph.output[1:]
        expected = expected[:1]
    return ir.Model.from_onnx(convert_opset(proto, Path(folder))), inputs, expected


def _run(library, model: ir.Model, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    vm = relax.VirtualMachine(library.executable, tvm.cpu())
    result = vm["main"](*(tvm.runtime.tensor(inputs[t.name]) for t in model.graph.inputs))
    return [r.numpy() for r in (list(result) if not hasattr(result, "numpy") else [result])]


def _compare(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    if expected.dtype.kind == "f":
        finite = np.isfinite(expected)   # nan and inf where expected, the rest within the dtype's rule
        np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=what)
        assert_close(np.where(finite, actual, 0.0), np.where(finite, expected, 0.0), expected.dtype, what)
        return
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_array_equal(actual, expected, err_msg=what)


@pytest.mark.parametrize("op,name", _cases())
def test_onnx_node_case_on_the_float_path(op, name):
    model, inputs, expected = _model(name)
    refused = skip_reason(name, REFUSED)
    if refused:
        with pytest.raises(UnsupportedModelError, match="the TVM backend cannot lower"):
            compile_qdq(model, "native", 1)
        return
    library = compile_qdq(model, "native", 1)
    actual = _run(library, model, inputs)
    assert len(actual) == len(expected)
    for value, wanted, output in zip(actual, expected, model.graph.outputs):
        _compare(value, wanted, f"{name} {output.name}")
