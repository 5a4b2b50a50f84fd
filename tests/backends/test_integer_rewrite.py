"""What the integer rewrite emits, in TVM's Before/Expected style: a QDQ model imported (Before),
rewritten, and compared structurally with the integer module written out by hand (Expected),
every constant computed here from the QDQ model's scales (the requantization contract the
kernels rely on: int32 accumulator + bias correction, int64 fixed-point multiply, one shift,
rounding, zero point, clamps)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from qcompiler.backends.tvm.fixed_point import multiplier_and_shift
from qcompiler.backends.tvm.importer import import_qdq
from qcompiler.backends.tvm.integer_rewrite import rewrite_to_integer

SX, ZX, SY = 0.5, 128, 0.75
W = np.array([2, -3, 1, 4], np.int8).reshape(2, 2, 1, 1)   # 2 output channels of a 1x1 conv
SW = np.array([0.25, 0.5], np.float32)
B = np.array([4, -2], np.int32)                             # int32 bias at scale SX * SW


def qdq_conv_relu() -> onnx.ModelProto:
    """Q(x) -> DQ -> Conv(DQ(w) per channel, DQ(b)) -> Relu -> Q -> DQ, as insert-qdq writes it."""
    inits = [numpy_helper.from_array(v, n) for n, v in (
        ("sx", np.float32(SX)), ("zx", np.uint8(ZX)), ("wq", W), ("sw", SW), ("zw", np.zeros(2, np.int8)),
        ("bq", B), ("sb", (SX * SW).astype(np.float32)), ("zb", np.zeros(2, np.int32)),
        ("sy", np.float32(SY)), ("zy", np.uint8(0)))]
    node = helper.make_node
    nodes = [node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]), node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             node("DequantizeLinear", ["wq", "sw", "zw"], ["wd"], axis=0),
             node("DequantizeLinear", ["bq", "sb", "zb"], ["bd"], axis=0),
             node("Conv", ["xd", "wd", "bd"], ["c"], kernel_shape=[1, 1]), node("Relu", ["c"], ["r"]),
             node("QuantizeLinear", ["r", "sy", "zy"], ["yq"]), node("DequantizeLinear", ["yq", "sy", "zy"], ["y"])]
    graph = helper.make_graph(nodes, "conv_relu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 2, 2])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def expected_integer_module() -> tvm.IRModule:
    """The rewrite's output for qdq_conv_relu, written out: the numbers from the scales alone."""
    correction = np.rint(B * (SX * SW) / (SX * SW)) - ZX * W.sum(axis=(1, 2, 3))   # bias - zp_x * sum(w)
    real = SX * SW.astype(np.float64) / SY
    shift = int(multiplier_and_shift(np.array(real.max()))[1])      # one shift, from the largest
    multiplier = np.rint(real * 2.0 ** shift).astype(np.int64)

    def const(value, dtype, shape=()):
        return relax.const(np.asarray(value).astype(dtype).reshape(shape), dtype)

    x = relax.Var("x", relax.TensorType((1, 2, 2, 2), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x], attrs={"num_input": 1}):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, const(SX, "float32"), const(ZX, "uint8"), axis=1, out_dtype="uint8"))
            acc = bb.emit(relax.op.nn.conv2d(q, const(W, "int8", W.shape), out_dtype="int32"))
            acc = bb.emit(relax.op.add(acc, const(correction, "int32", (1, 2, 1, 1))))
            wide = bb.emit(relax.op.astype(acc, "int64"))
            product = bb.emit(relax.op.multiply(wide, const(multiplier, "int64", (1, 2, 1, 1))))
            # |acc| is bounded far below a tie for these multipliers: round half up, no fix-up.
            rounded = bb.emit(relax.op.add(product, const(1 << (shift - 1), "int64")))
            shifted = bb.emit(relax.op.right_shift(rounded, const(shift, "int64")))
            centred = bb.emit(relax.op.add(shifted, const(0, "int64")))               # zero point 0
            low = bb.emit(relax.op.maximum(centred, const(0, "int64")))               # Relu: 0.0 -> 0
            high = bb.emit(relax.op.minimum(low, const(255, "int64")))
            y = bb.emit(relax.op.astype(high, "uint8"))
            out = bb.emit_output(relax.op.dequantize(y, const(SY, "float32"), const(0, "uint8"), axis=1))
        bb.emit_func_output(out)
    return bb.get()


def test_conv_relu_becomes_integer_conv_and_fixed_point_requantization():
    before = import_qdq(qdq_conv_relu(), 1)
    after, lowered = rewrite_to_integer(before)
    assert lowered == {"linear": 1}
    canonical = relax.transform.CanonicalizeBindings()
    tvm.ir.assert_structural_equal(canonical(after), canonical(expected_integer_module()), map_free_vars=True)


def test_the_expected_module_computes_what_the_qdq_model_does():
    """The hand-written Expected is itself right: built, it agrees with onnxruntime on the QDQ
    model to within 1 LSB (so the structural test pins a correct emission, not a copied one)."""
    from qcompiler.executor import session

    x = np.random.default_rng(0).uniform(-60, 60, (1, 2, 2, 2)).astype(np.float32)
    reference = session(qdq_conv_relu(), optimize=False).run(None, {"x": x})[0]
    vm = relax.VirtualMachine(tvm.compile(expected_integer_module(), target="llvm"), tvm.cpu())
    ours = vm["main"](tvm.runtime.tensor(x)).numpy()
    assert np.abs(ours - reference).max() <= SY * 1.0001


@pytest.mark.parametrize("zero_point", [0, 128])
def test_the_rewrite_keeps_the_integer_input(zero_point):
    """The integer conv reads the quantized tensor itself, not its dequantized float."""
    global ZX
    saved, ZX = ZX, zero_point
    try:
        after, _ = rewrite_to_integer(import_qdq(qdq_conv_relu(), 1))
    finally:
        ZX = saved
    calls = [b.value for b in after["main"].body.blocks[0].bindings if isinstance(b.value, relax.Call)]
    conv = next(c for c in calls if c.op.name == "relax.nn.conv2d")
    assert conv.args[0].ty.dtype == "uint8" and str(conv.attrs.out_dtype) == "int32"
    assert not any(c.op.name == "relax.dequantize" for c in calls[:-1])


def test_the_rewrite_records_each_layer_for_kernel_selection():
    """Kernel selection takes the numbers from the rewrite's record, not from the ops: the record
    holds what the Expected module was built from, under names that survive the NHWC layout pass."""
    from qcompiler.backends.tvm.layout import to_nhwc
    from qcompiler.backends.tvm.integer_rewrite import lower_to_integer
    from qcompiler.backends.tvm.requantization import var_name

    mod, _, records = lower_to_integer(import_qdq(qdq_conv_relu(), 1))
    (record,) = records.values()
    real = SX * SW.astype(np.float64) / SY
    shift = int(multiplier_and_shift(np.array(real.max()))[1])
    assert record.requantize.shift == shift and not record.requantize.ties
    assert (record.requantize.zero_point, record.requantize.lo, record.requantize.hi) == (0, 0, 255)
    np.testing.assert_array_equal(record.multipliers[0].reshape(-1), np.rint(real * 2.0 ** shift))
    np.testing.assert_array_equal(record.correction.reshape(-1), B - ZX * W.sum(axis=(1, 2, 3)))
    names = {var_name(b.var) for b in to_nhwc(mod)["main"].body.blocks[0].bindings}
    assert {record.acc_name, record.out_name} <= names


def test_resnet_records_every_conv_gemm_and_residual_add():
    import qcompiler
    from qcompiler.backends.tvm.build import lower
    from graphs import ROOT

    data = np.load(ROOT / "models" / "fashion_mnist_subset.npz")["input"][:16]
    qdq = qcompiler.quantize(str(ROOT / "models" / "fashion_resnet8.onnx"), {"input": data}, progress=False).qdq
    integer = lower(qdq.to_onnx(), 1)
    assert integer.lowered["linear"] == 10 and integer.lowered["residual_add"] == 3
    kinds = sorted("add" if r.correction is None else "layer" for r in integer.records.values())
    assert kinds == ["add"] * 3 + ["layer"] * 10


def expected_sdot_module() -> tvm.IRModule:
    """Kernel selection's output for the NHWC form of qdq_conv_relu on an sdot target, written
    out: the conv and its requantization become one call of the sdot kernel, whose weight is
    packed (4-bit grid: two to a byte) and whose requantization table holds the record's
    numbers, the correction shifted by 128 * sum(w) for sdot's signed activations."""
    from qcompiler.backends.tvm.schedules import int8_conv, packing, requantize

    real = SX * SW.astype(np.float64) / SY
    shift = int(multiplier_and_shift(np.array(real.max()))[1])
    multiplier = np.rint(real * 2.0 ** shift).astype(np.int64)
    weight = W.transpose(0, 2, 3, 1)                                   # OHWI
    correction = B - ZX * W.sum(axis=(1, 2, 3)) + 128 * W.astype(np.int64).sum(axis=(1, 2, 3))
    rq = requantize.Requantize(0, 0, 255, "uint8", shift, False)
    padded = np.zeros((16, 1, 1, 4), np.int8)                          # 16 output, 4 input channels
    padded[:2, :, :, :2] = weight
    kernel = int8_conv.conv2d_kernel(1, 2, 2, 4, 16, 1, 1, (1, 1), (1, 1), (0, 0, 0, 0),
                                     rq.code_for(weight, correction, 128), 4, "sdot", 0)

    def const(value, dtype):
        return relax.const(np.asarray(value).astype(dtype), dtype)

    x = relax.Var("x", relax.TensorType((1, 2, 2, 2), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x], attrs={"num_input": 1}):
        with bb.dataflow():
            q = bb.emit(relax.op.quantize(x, const(SX, "float32"), const(ZX, "uint8"), axis=1, out_dtype="uint8"))
            nhwc = bb.emit(relax.op.permute_dims(q, [0, 2, 3, 1]))
            wide = bb.emit(relax.op.nn.pad(nhwc, [0, 0, 0, 0, 0, 0, 0, 2], pad_value=0.0))   # 2 -> 4 channels
            gvar = bb.add_func(kernel, kernel.attrs["global_symbol"])
            table = requantize.requantize_table(correction, multiplier, rq, 2, 16)
            out = bb.emit(relax.op.call_tir(gvar, relax.Tuple([wide, const(packing.pack_weight_int4(padded, 16), "uint8"),
                                                               const(table, "int32")]),
                                            relax.TensorType([1, 2, 2, 16], "uint8")))
            out = bb.emit(relax.op.strided_slice(out, axes=[3], begin=[0], end=[2]))
            nchw = bb.emit(relax.op.permute_dims(out, [0, 3, 1, 2]))
            y = bb.emit_output(relax.op.dequantize(nchw, const(SY, "float32"), const(0, "uint8"), axis=1))
        bb.emit_func_output(y)
    return bb.get()


def test_kernel_selection_puts_the_recorded_layer_on_the_sdot_kernel():
    from qcompiler.backends.tvm.apply_schedules import use_dot_kernels
    from qcompiler.backends.tvm.layout import to_nhwc
    from qcompiler.backends.tvm.integer_rewrite import lower_to_integer

    mod, _, records = lower_to_integer(import_qdq(qdq_conv_relu(), 1))
    after, used, _ = use_dot_kernels(to_nhwc(mod), "sdot", records)
    assert used == {"sdot 1x1 conv2d / matmul int4 + requantize": 1}
    tvm.ir.assert_structural_equal(after, expected_sdot_module(), map_free_vars=True)


def qdq_conv_relu_4bit(zero_point: int, dtype=np.uint8, low: int = 0, high: int = 15) -> onnx.ModelProto:
    """qdq_conv_relu with its output a 4-bit activation as insert-qdq writes one below opset 21:
    QuantizeLinear to 8 bits, then a Clip of the integers to [low, high]."""
    model = qdq_conv_relu()
    graph = model.graph
    for init in graph.initializer:
        if init.name == "zy":
            init.CopyFrom(numpy_helper.from_array(dtype(zero_point), "zy"))
    graph.initializer.extend([numpy_helper.from_array(dtype(low), "lo"), numpy_helper.from_array(dtype(high), "hi")])
    dq = next(n for n in graph.node if n.output[0] == "y")
    dq.input[0] = "yc"
    graph.node.insert(len(graph.node) - 1, helper.make_node("Clip", ["yq", "lo", "hi"], ["yc"]))
    return model


@pytest.mark.parametrize("zero_point, dtype, low, high", [(0, np.uint8, 0, 15), (3, np.uint8, 0, 15),
                                                          (0, np.int8, -8, 7), (-2, np.int8, -8, 7)])
def test_an_integer_clip_moves_before_its_quantizer_with_the_same_integers(zero_point, dtype, low, high):
    """clip_before_quantize gives the same outputs in onnxruntime, the bounds themselves included
    (inputs at and just around (bound - zp) * scale), and leaves no integer Clip."""
    from qcompiler.backends.tvm.importer import clip_before_quantize
    from qcompiler.executor import session

    model = qdq_conv_relu_4bit(zero_point, dtype, low, high)
    moved = clip_before_quantize(onnx.ModelProto.FromString(model.SerializeToString()))
    onnx.checker.check_model(moved)
    clips = [n for n in moved.graph.node if n.op_type == "Clip"]
    assert len(clips) == 1 and clips[0].output[0] != "yc" and "yc" not in {i for n in moved.graph.node for i in n.input}
    rng = np.random.default_rng(1)
    for x in [rng.uniform(-60, 60, (1, 2, 2, 2)).astype(np.float32) for _ in range(200)]:
        a = session(model, optimize=False).run(None, {"x": x})[0]
        b = session(moved, optimize=False).run(None, {"x": x})[0]
        np.testing.assert_array_equal(a, b)


def test_a_4bit_activation_lowers_with_its_clamp_in_the_requantization():
    """The 4-bit output's clamp is the requantization's (no maximum/minimum of its own left)."""
    after, lowered = rewrite_to_integer(import_qdq(qdq_conv_relu_4bit(0), 1))
    assert lowered == {"linear": 1}
    text = after["main"].script()
    assert text.count("R.maximum(") == 1 and text.count("R.minimum(") == 1, text
    assert 'R.const(15, "int64"))' in text, text


@pytest.mark.parametrize("attrs,integer", [
    ({"kernel_shape": [2, 2], "strides": [2, 2]}, True),                        # tiles its output: a 1x1 conv
    ({"kernel_shape": [4, 4], "strides": [2, 2], "pads": [1, 1, 1, 1]}, True),   # overlapping: a 2x2 phase conv
    ({"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, True),
    ({"kernel_shape": [2, 2], "strides": [2, 2], "group": 2}, False),
    ({"kernel_shape": [1, 1], "strides": [1, 1], "pads": [1, 1, 1, 1]}, False)])  # would crop the input
def test_a_conv_transpose_is_integer_but_where_grouped_or_cropping_its_input(attrs, integer):
    """A transposed conv is a stride-1 conv onto stride x stride phase channels, a depth-to-space
    and a crop (transposed_conv.py); a grouped one, or one whose padding reaches past the phases,
    stays float between its DQ and Q (correct, measured by the fidelity tests, only not integer)."""
    import qcompiler
    from graphs import make_model

    rng = np.random.default_rng(0)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    model = make_model([node], [("x", [1, 4, 5, 5])], [("y", None)],
                       {"w": rng.normal(0, 0.3, (4, 6 // attrs.get("group", 1), *attrs["kernel_shape"])).astype(np.float32),
                        "b": rng.normal(0, 0.1, 6).astype(np.float32)}, opset=13)
    qdq = qcompiler.quantize(model, {"x": rng.normal(0, 1, (8, 4, 5, 5)).astype(np.float32)}, "w8a8", progress=False).qdq
    after, lowered = rewrite_to_integer(import_qdq(qdq.to_onnx(), 1))
    text = after["main"].script()
    assert ("R.nn.conv2d_transpose" not in text) == integer, text
    assert (lowered.get("linear", 0) == 1) == integer, dict(lowered)
