"""Property-based fuzzing of quantize + compile + run (tests/fuzz_graphs.py): random small float
graphs and presets, the compiled library against its QDQ model in onnxruntime.

The property is the contract of qcompiler/fidelity.py, layer by layer: fed the reference's
inputs, every quantized tensor the library computes is within 1 LSB of the QDQ model's, and
every float output within float rounding. (End to end a near-tie can grow past 1 LSB through
later layers; `fuzz_graphs.check` compiles the model cut at its quantizers to see each layer
alone.) A short, derandomized run for CI; benchmarks/fuzz.py runs a thousand.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
from hypothesis import HealthCheck, Phase, event, given, settings
from onnx import helper, numpy_helper

import fuzz_graphs
import qcompiler
from graphs import make_proto
from qcompiler.executor import session
from qcompiler.fidelity import compare, output_scales
from qcompiler.layer_fidelity import cut_at_quantizers, layer_feeds

#: Derandomized: CI draws the same examples every run. No shrinking: each example costs two
#: compiles (seconds), and shrinking one failure would take minutes; a failure prints the case
#: (preset, input shape, seed, layers) and benchmarks/fuzz.py saves reproducers as .onnx.
CI = settings(max_examples=12, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow])


@CI
@given(fuzz_graphs.fuzz_cases(max_layers=3))
def test_each_layer_of_the_library_follows_the_qdq_model(case):
    with tempfile.TemporaryDirectory() as tmp:
        outcome = fuzz_graphs.check(case, Path(tmp))
    if outcome.status == "refused":   # an UnsupportedModelError says so on purpose: not a failure
        event("refused")
        return
    if outcome.status != "ok":
        saved = case.save(Path(tempfile.mkdtemp(prefix="qcompiler-fuzz-")))[0].parent
        raise AssertionError(f"{case.describe()}\n{outcome.line()}\n{outcome.error}\nreproducer: {saved}/ (case.txt)")


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(fuzz_graphs.fuzz_cases(max_layers=5))
def test_drawn_graphs_are_valid_onnx_that_onnxruntime_runs(case):
    """The strategies' own check: the checker (full), strict shape inference and onnxruntime
    accept every graph, and its output is finite and of the shape inference says."""
    _assert_valid(case)


def test_seeded_cases_are_valid_and_the_same_every_time():
    """benchmarks/fuzz.py's cases: valid too, and case i of a seed rebuilt alone is the same
    graph (what its reproducers and `--only i` rely on)."""
    for index in range(1, 101):
        case = fuzz_graphs.seeded_case(0, index, max_layers=5)
        _assert_valid(case)
        again = fuzz_graphs.seeded_case(0, index, max_layers=5)
        assert again.proto.SerializeToString() == case.proto.SerializeToString(), index
        assert again.preset == case.preset and np.array_equal(again.calib["x"], case.calib["x"])


def _assert_valid(case: fuzz_graphs.FuzzCase) -> None:
    onnx.checker.check_model(case.proto, full_check=True)
    onnx.shape_inference.infer_shapes(case.proto, check_type=True, strict_mode=True)
    (output,) = session(case.proto, optimize=False).run(None, {"x": case.calib["x"][:1]})
    assert output.shape == tuple(d.dim_value for d in case.proto.graph.output[0].type.tensor_type.shape.dim)
    assert np.isfinite(output).all(), case


def _two_convs() -> onnx.ModelProto:
    """x -> Conv 3x3 -> Relu -> Conv 3x3: two quantized layers, 4 channels."""
    rng = np.random.default_rng(0)
    inits = {f"w{i}": rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32) for i in (1, 2)}
    inits.update({f"b{i}": rng.normal(0, 0.1, 4).astype(np.float32) for i in (1, 2)})
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2", kernel_shape=[3, 3], pads=[1] * 4)]
    return make_proto(nodes, [("x", [1, 4, 6, 6])], [("y", None)], inits)


def _shift_bias(qdq: onnx.ModelProto, conv: onnx.NodeProto, lsb: float) -> onnx.ModelProto:
    """A copy of `qdq` whose `conv` computes `lsb` LSBs of its output more on every element: its
    int32 bias raised by lsb * output scale / accumulator scale (the output: the QuantizeLinear
    after it and its Relu)."""
    tampered = onnx.ModelProto()
    tampered.CopyFrom(qdq)
    producers = {o: n for n in tampered.graph.node for o in n.output}
    readers = {i: n for n in tampered.graph.node for i in n.input}
    inits = {i.name: i for i in tampered.graph.initializer}
    bias_dq = producers[conv.input[2]]
    quantize_out = readers[readers[conv.output[0]].output[0]]
    assert quantize_out.op_type == "QuantizeLinear", quantize_out
    out_scale = float(numpy_helper.to_array(inits[quantize_out.input[1]]))
    acc_scale = numpy_helper.to_array(inits[bias_dq.input[1]])
    bias = numpy_helper.to_array(inits[bias_dq.input[0]])
    shifted = (bias + np.rint(lsb * out_scale / acc_scale)).astype(bias.dtype)
    inits[bias_dq.input[0]].CopyFrom(numpy_helper.from_array(shifted, bias_dq.input[0]))
    return tampered


def test_the_layer_check_blames_the_layer_that_is_off_and_only_it(tmp_path):
    """The oracle can fail, and says where: a library built from a QDQ model whose first conv is
    3 LSB high, checked against the true QDQ model, is 3 LSB off at that conv's output, and the
    second conv, fed the reference's input, is within 1 LSB (end to end it would be off too)."""
    calib = {"x": np.random.default_rng(1).normal(0, 1, (8, 4, 6, 6)).astype(np.float32)}
    qdq = qcompiler.quantize(qcompiler.Model.from_onnx(_two_convs()), calib, "w8a8", progress=False).qdq.to_onnx()
    relu = next(n for n in qdq.graph.node if n.op_type == "Relu")
    first = next(n for n in qdq.graph.node if relu.input[0] in n.output)
    cut, fed = cut_at_quantizers(qdq)
    tampered_cut, _ = cut_at_quantizers(_shift_bias(qdq, first, 3.0))
    library = fuzz_graphs.build_library(tampered_cut, tmp_path / "tampered")
    fidelity = {f.output: f.max_lsb for f in compare(cut, library, layer_feeds(qdq, fed, calib))}
    (first_output,) = fed.values()            # one cut: after the first conv (and its Relu)
    final = qdq.graph.output[0].name
    assert set(fidelity) == {first_output, final} and all(output_scales(cut).values())
    # 3 LSB, give or take the rounding of the shifted value (a near-tie goes either way)
    assert 2.0 <= fidelity[first_output] <= 4.0 + 1e-4, fidelity
    assert fidelity[final] <= 1.0 + 1e-4, fidelity
