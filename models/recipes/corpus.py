"""A corpus of models written the way exporters write them: the test bed for "models from the wild".

Each recipe builds an ONNX model of one family users bring (ResNet, MobileNetV2/V3, EfficientNet-Lite,
ShuffleNet, DenseNet, Inception, SqueezeNet, an FPN detector, a text recognizer, a tflite-converted net,
an LCNet-style PaddlePaddle export) with the patterns their exporters emit: a dynamic batch, the
Reshape target computed at run time (Shape -> Gather -> Unsqueeze -> Concat), opset-dependent op forms
(Clip bounds as attributes before opset 11, Squeeze axes as inputs from 13, LayerNormalization from 17,
Gelu from 20, ...), decomposed activations, scale layers, computed Pads and NHWC Transposes.

The weights are random (He-initialised, with BatchNorm statistics), so the models test passes,
quantization and compilation, not accuracy. `build(name, opset)` returns an onnx.ModelProto;
`CORPUS` lists every (name, opset) the tests and `benchmarks/wild.py` use.

    python -m qcompiler.models.recipes.corpus OUT_DIR     # writes every corpus model as OUT_DIR/NAME-opsetN.onnx
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class Exporter:
    """Emits nodes as an exporter at `opset` would; every helper returns its output's name."""

    def __init__(self, name: str, opset: int, seed: int = 0) -> None:
        self.name, self.opset = name, opset
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.count = 0

    # -- plumbing ---------------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, values, base: str = "c") -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs):
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=f"/{outs[0]}", **attrs))
        return outs[0] if n_out == 1 else outs

    def input(self, name: str, shape, elem=TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem, shape))
        return name

    def output(self, x: str, name: str) -> str:
        self.nodes[-1].output[0] = name  # the last node writes the graph output, as exporters name it
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        return name

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs, self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                                  producer_name="qcompiler-corpus")
        proto.ir_version = min(onnx.IR_VERSION, 10 if self.opset >= 21 else 8)
        self.raw = proto
        probe = onnx.ModelProto()
        probe.CopyFrom(proto)
        del probe.graph.output[:]  # so that inference reports the outputs as value_info
        inferred = onnx.shape_inference.infer_shapes(probe, data_prop=True)
        types = {v.name: v.type for v in inferred.graph.value_info}
        for out in proto.graph.output:  # declared outputs carry their inferred (possibly symbolic) shapes
            out.type.CopyFrom(types[out.name])
            if not out.type.tensor_type.HasField("shape"):  # old opsets: as torch does, from a traced run
                out.type.CopyFrom(self._traced_type(probe, out.name))
        onnx.checker.check_model(proto, full_check=True)
        return proto

    def _traced_type(self, probe: onnx.ModelProto, name: str) -> onnx.TypeProto:
        import onnxruntime

        probe = onnx.ModelProto()
        probe.CopyFrom(self.raw)
        probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
        session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = sample_inputs(probe, 2, name=self.name.rsplit("-opset", 1)[0])
        dims: list = list(session.run([name], feeds)[0].shape)
        dynamic_batch = any(d.dim_param for v in probe.graph.input for d in v.type.tensor_type.shape.dim[:1])
        dims[0] = "batch" if dynamic_batch else dims[0]
        return helper.make_tensor_type_proto(TensorProto.FLOAT, dims)

    # -- opset-dependent forms ----------------------------------------------------------------------
    def axes_op(self, op_type: str, x: str, axes: Sequence[int], input_from: int, **attrs) -> str:
        """Squeeze/Unsqueeze (axes an input from 13), Reduce* (from 18: ReduceSum from 13)."""
        if self.opset >= input_from:
            return self.op(op_type, [x, self.const(np.array(axes, np.int64), "axes")], **attrs)
        return self.op(op_type, [x], axes=list(axes), **attrs)

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.axes_op("Unsqueeze", x, axes, 13)

    def reduce_mean(self, x: str, axes: Sequence[int], keepdims: int = 1) -> str:
        return self.axes_op("ReduceMean", x, axes, 18, keepdims=keepdims)

    def clip(self, x: str, lo: float, hi: float) -> str:
        if self.opset >= 11:
            return self.op("Clip", [x, self.const(np.float32(lo), "min"), self.const(np.float32(hi), "max")])
        return self.op("Clip", [x], min=lo, max=hi)

    def pad(self, x: str, pads: Sequence[int]) -> str:
        if self.opset >= 11:
            return self.op("Pad", [x, self.const(np.array(pads, np.int64), "pads")], mode="constant")
        return self.op("Pad", [x], pads=list(pads), mode="constant")

    def hard_swish(self, x: str, decomposed: bool = False) -> str:
        if self.opset >= 14 and not decomposed:
            return self.op("HardSwish", [x])
        # x * relu6(x + 3) / 6, as older torch and PaddlePaddle exports write it
        shifted = self.op("Add", [x, self.const(np.float32(3.0))])
        return self.op("Div", [self.op("Mul", [x, self.clip(shifted, 0.0, 6.0)]), self.const(np.float32(6.0))])

    def gelu(self, x: str) -> str:
        if self.opset >= 20:
            return self.op("Gelu", [x])
        inner = self.op("Erf", [self.op("Div", [x, self.const(np.float32(np.sqrt(2.0)))])])
        half = self.op("Mul", [x, self.op("Add", [inner, self.const(np.float32(1.0))])])
        return self.op("Mul", [half, self.const(np.float32(0.5))])

    def layer_norm(self, x: str, dim: int) -> str:
        scale = self.const(self.rng.uniform(0.8, 1.2, dim).astype(np.float32), "ln_scale")
        bias = self.const(self.rng.normal(0, 0.1, dim).astype(np.float32), "ln_bias")
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)
        mean = self.reduce_mean(x, [-1])
        centred = self.op("Sub", [x, mean])
        var = self.reduce_mean(self.op("Pow", [centred, self.const(np.float32(2.0))]), [-1])
        std = self.op("Sqrt", [self.op("Add", [var, self.const(np.float32(1e-5))])])
        return self.op("Add", [self.op("Mul", [self.op("Div", [centred, std]), scale]), bias])

    def resize2x(self, x: str) -> str:
        scales = np.array([1, 1, 2, 2], np.float32)
        if self.opset < 10:
            return self.op("Upsample", [x, self.const(scales, "scales")], mode="nearest")
        if self.opset < 11:
            return self.op("Resize", [x, self.const(scales, "scales")], mode="nearest")
        roi = "" if self.opset >= 13 else self.const(np.zeros(0, np.float32), "roi")  # optional only from 13
        return self.op("Resize", [x, roi, self.const(scales, "scales")], mode="nearest",
                       coordinate_transformation_mode="asymmetric", nearest_mode="floor")

    def dynamic_flatten(self, x: str) -> str:
        """x.view(x.size(0), -1) as torch exports it with a dynamic batch."""
        batch = self.op("Gather", [self.op("Shape", [x]), self.const(np.array(0, np.int64), "idx")], axis=0)
        target = self.op("Concat", [self.unsqueeze(batch, [0]), self.const(np.array([-1], np.int64), "m1")], axis=0)
        return self.op("Reshape", [x, target])

    # -- layers --------------------------------------------------------------------------------------
    def conv(self, x: str, cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, pad: int | None = None,
             bn: bool = True, bias: bool = False, act: str | None = "relu") -> str:
        fan_in = cin // groups * k * k
        w = self.const(self.rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin // groups, k, k)).astype(np.float32), "w")
        ins = [x, w] + ([self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b")] if bias else [])
        p = k // 2 if pad is None else pad
        y = self.op("Conv", ins, kernel_shape=[k, k], strides=[stride, stride], pads=[p] * 4, group=groups)
        if bn:
            y = self.batchnorm(y, cout)
        return self.activation(y, act)

    def batchnorm(self, x: str, c: int) -> str:
        r = self.rng
        params = [r.uniform(0.5, 1.5, c), r.normal(0, 0.2, c), r.normal(0, 0.2, c), r.uniform(0.5, 2.0, c)]
        names = [self.const(p.astype(np.float32), n) for p, n in zip(params, ("gamma", "beta", "mean", "var"))]
        attrs = {"spatial": 1} if self.opset < 9 else {}
        return self.op("BatchNormalization", [x, *names], epsilon=1e-5, **attrs)

    def activation(self, x: str, act: str | None) -> str:
        if act == "relu":
            return self.op("Relu", [x])
        if act == "relu6":
            return self.clip(x, 0.0, 6.0)
        if act == "hardswish":
            return self.hard_swish(x)
        if act == "hardswish-decomposed":
            return self.hard_swish(x, decomposed=True)
        if act == "swish":
            return self.op("Mul", [x, self.op("Sigmoid", [x])])
        return x

    def squeeze_excite(self, x: str, c: int, reduced: int, gate: str = "hardsigmoid") -> str:
        pooled = self.op("GlobalAveragePool", [x])
        hidden = self.conv(pooled, c, reduced, k=1, bn=False, bias=True, act="relu")
        logits = self.conv(hidden, reduced, c, k=1, bn=False, bias=True, act=None)
        scale = self.op("HardSigmoid", [logits], alpha=1 / 6, beta=0.5) if gate == "hardsigmoid" \
            else self.op("Sigmoid", [logits])
        return self.op("Mul", [x, scale])

    def gemm(self, x: str, cin: int, cout: int) -> str:
        w = self.const(self.rng.normal(0, np.sqrt(1.0 / cin), (cout, cin)).astype(np.float32), "fc_w")
        return self.op("Gemm", [x, w, self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "fc_b")], transB=1)

    def matmul(self, x: str, cin: int, cout: int, bias: bool = True) -> str:
        w = self.const(self.rng.normal(0, np.sqrt(1.0 / cin), (cin, cout)).astype(np.float32), "mm_w")
        y = self.op("MatMul", [x, w])
        return self.op("Add", [y, self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "mm_b")]) if bias else y


IMAGE = ["batch", 3, 32, 32]


def resnet(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.conv(x, 3, 16)
    for cin, cout, stride in ((16, 16, 1), (16, 32, 2), (32, 64, 2)):
        y = e.conv(e.conv(x, cin, cout, stride=stride), cout, cout, act=None)
        skip = x if (cin, stride) == (cout, 1) else e.conv(x, cin, cout, k=1, stride=stride, pad=0, act=None)
        x = e.op("Relu", [e.op("Add", [y, skip])])
    e.output(e.gemm(e.dynamic_flatten(e.op("GlobalAveragePool", [x])), 64, 10), "logits")


def mobilenet_v2(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.conv(x, 3, 16, stride=2, act="relu6")
    for cin, cout, stride, expand in ((16, 16, 1, 1), (16, 24, 2, 6), (24, 24, 1, 6), (24, 32, 2, 6)):
        hidden = cin * expand
        y = e.conv(x, cin, hidden, k=1, pad=0, act="relu6") if expand != 1 else x
        y = e.conv(y, hidden, hidden, stride=stride, groups=hidden, act="relu6")
        y = e.conv(y, hidden, cout, k=1, pad=0, act=None)
        x = e.op("Add", [x, y]) if (cin, stride) == (cout, 1) else y
    pooled = e.reduce_mean(x, [2, 3], keepdims=0)  # torch's x.mean([2, 3])
    e.output(e.gemm(pooled, 32, 10), "logits")


def mobilenet_v3(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.conv(x, 3, 16, stride=2, act="hardswish")
    for cin, cout, stride, hidden, act, se in ((16, 16, 2, 16, "relu", True), (16, 24, 2, 64, "relu", False),
                                              (24, 24, 1, 72, "hardswish", True), (24, 40, 2, 96, "hardswish", True)):
        y = e.conv(x, cin, hidden, k=1, pad=0, act=act) if hidden != cin else x
        y = e.conv(y, hidden, hidden, stride=stride, groups=hidden, act=act)
        if se:
            y = e.squeeze_excite(y, hidden, max(8, hidden // 4))
        y = e.conv(y, hidden, cout, k=1, pad=0, act=None)
        x = e.op("Add", [x, y]) if (cin, stride) == (cout, 1) else y
    x = e.conv(x, 40, 96, k=1, pad=0, act="hardswish")
    flat = e.dynamic_flatten(e.op("GlobalAveragePool", [x]))
    e.output(e.gemm(e.hard_swish(e.gemm(flat, 96, 128)), 128, 10), "logits")


def _same_pads(e: Exporter, x: str, k: int, stride: int) -> str:
    """TF "SAME" padding as tf2onnx writes it for a dynamic input: pads computed from Shape at run time."""
    spatial = e.op("Slice", [e.op("Shape", [x]), e.const(np.array([2], np.int64)), e.const(np.array([4], np.int64))]) \
        if e.opset >= 10 else e.op("Slice", [e.op("Shape", [x])], starts=[2], ends=[4])
    # total = max((ceil(n / s) - 1) * s + k - n, 0); before = total // 2, after = total - before
    s, kk = e.const(np.array(stride, np.int64)), e.const(np.array(k, np.int64))
    out = e.op("Div", [e.op("Add", [spatial, e.const(np.array(stride - 1, np.int64))]), s])
    total = e.op("Sub", [e.op("Add", [e.op("Mul", [e.op("Sub", [out, e.const(np.array(1, np.int64))]), s]), kk]),
                         spatial])
    total = e.op("Max", [total, e.const(np.array([0, 0], np.int64))])
    before = e.op("Div", [total, e.const(np.array(2, np.int64))])
    after = e.op("Sub", [total, before])
    zeros = e.const(np.array([0, 0], np.int64))
    pads = e.op("Concat", [zeros, before, zeros, after], axis=0)
    if e.opset < 11:
        raise ValueError("computed Pads need opset >= 11")
    return e.op("Pad", [x, pads], mode="constant")


def efficientnet_lite(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.conv(_same_pads(e, x, 3, 2), 3, 16, stride=2, pad=0, act="relu6")
    for cin, cout, stride, expand in ((16, 16, 1, 1), (16, 24, 2, 6), (24, 24, 1, 6), (24, 40, 2, 6)):
        hidden = cin * expand
        y = e.conv(x, cin, hidden, k=1, pad=0, act="relu6") if expand != 1 else x
        y = _same_pads(e, y, 3, stride) if stride == 2 else y
        y = e.conv(y, hidden, hidden, stride=stride, groups=hidden, pad=0 if stride == 2 else 1, act="relu6")
        y = e.conv(y, hidden, cout, k=1, pad=0, act=None)
        x = e.op("Add", [x, y]) if (cin, stride) == (cout, 1) else y
    pooled = e.reduce_mean(x, [2, 3], keepdims=0)  # tf's reduce_mean as global pooling
    e.output(e.gemm(pooled, 40, 10), "logits")


def _channel_shuffle(e: Exporter, x: str, groups: int) -> str:
    """x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, -1, h, w) with every size read by Shape."""
    shape = e.op("Shape", [x])
    n, c, h, w = (e.unsqueeze(e.op("Gather", [shape, e.const(np.array(i, np.int64))], axis=0), [0]) for i in range(4))
    per_group = e.op("Div", [c, e.const(np.array([groups], np.int64))])
    grouped = e.op("Reshape", [x, e.op("Concat", [n, e.const(np.array([groups], np.int64)), per_group, h, w], axis=0)])
    swapped = e.op("Transpose", [grouped], perm=[0, 2, 1, 3, 4])
    return e.op("Reshape", [swapped, e.op("Concat", [n, e.const(np.array([-1], np.int64)), h, w], axis=0)])


def shufflenet(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.op("MaxPool", [e.conv(x, 3, 24, stride=2)], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    for _ in range(2):
        if e.opset >= 13:
            left, right = e.op("Split", [x, e.const(np.array([12, 12], np.int64))], n_out=2, axis=1)
        else:
            left, right = e.op("Split", [x], n_out=2, axis=1, split=[12, 12])
        right = e.conv(e.conv(e.conv(right, 12, 12, k=1, pad=0), 12, 12, groups=12, act=None), 12, 12, k=1, pad=0)
        x = _channel_shuffle(e, e.op("Concat", [left, right], axis=1), 2)
    e.output(e.gemm(e.dynamic_flatten(e.op("GlobalAveragePool", [x])), 24, 10), "logits")


def densenet(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.conv(x, 3, 16)
    channels = 16
    for block in range(2):
        for _ in range(3):  # pre-activation: BN -> ReLU -> Conv (the BN is not after a conv)
            y = e.conv(e.op("Relu", [e.batchnorm(x, channels)]), channels, 8, bn=False, act=None)
            x, channels = e.op("Concat", [x, y], axis=1), channels + 8
        if block == 0:
            x = e.conv(e.op("Relu", [e.batchnorm(x, channels)]), channels, channels // 2, k=1, pad=0, bn=False, act=None)
            channels //= 2
            x = e.op("AveragePool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = e.op("Relu", [e.batchnorm(x, channels)])
    e.output(e.gemm(e.op("Flatten", [e.op("GlobalAveragePool", [x])], axis=1), channels, 10), "logits")


def _scale_layer(e: Exporter, x: str, c: int) -> str:
    """Caffe's Scale layer after a conv: Mul and Add by per-channel constants shaped [C, 1, 1]."""
    gamma = e.const(e.rng.uniform(0.5, 1.5, (c, 1, 1)).astype(np.float32), "scale")
    beta = e.const(e.rng.normal(0, 0.2, (c, 1, 1)).astype(np.float32), "shift")
    return e.op("Add", [e.op("Mul", [x, gamma]), beta])


def inception(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.op("Relu", [_scale_layer(e, e.conv(x, 3, 16, bn=False, bias=True, act=None), 16)])
    branches = [e.op("Relu", [_scale_layer(e, e.conv(x, 16, 8, k=1, pad=0, bn=False, bias=True, act=None), 8)])]
    mid = e.op("Relu", [_scale_layer(e, e.conv(x, 16, 8, k=1, pad=0, bn=False, bias=True, act=None), 8)])
    branches.append(e.op("Relu", [_scale_layer(e, e.conv(mid, 8, 12, bn=False, bias=True, act=None), 12)]))
    pooled = e.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    branches.append(e.conv(pooled, 16, 8, k=1, pad=0, act="relu"))
    x = e.op("Concat", branches, axis=1)
    e.output(e.gemm(e.dynamic_flatten(e.op("GlobalAveragePool", [x])), 28, 10), "logits")


def squeezenet(e: Exporter) -> None:
    x = e.input("input", IMAGE)
    x = e.op("MaxPool", [e.conv(x, 3, 32, stride=2, bn=False, bias=True)], kernel_shape=[3, 3], strides=[2, 2])
    for cin, squeeze, expand in ((32, 8, 16), (32, 8, 16)):
        s = e.conv(x, cin, squeeze, k=1, pad=0, bn=False, bias=True)
        x = e.op("Concat", [e.conv(s, squeeze, expand, k=1, pad=0, bn=False, bias=True),
                            e.conv(s, squeeze, expand, bn=False, bias=True)], axis=1)
    x = e.conv(e.op("Dropout", [x]), 32, 10, k=1, pad=0, bn=False, bias=True)
    e.output(e.op("Flatten", [e.op("GlobalAveragePool", [x])]), "logits")


def fpn_detector(e: Exporter) -> None:
    """A backbone, a top-down FPN (Resize + Add, one ConvTranspose), two heads reshaped to [N, -1, K]."""
    x = e.input("input", ["batch", 3, "height", "width"])
    c2 = e.conv(e.conv(x, 3, 16, stride=2), 16, 24, stride=2)
    c3 = e.conv(c2, 24, 32, stride=2)
    c4 = e.conv(c3, 32, 48, stride=2)
    p4 = e.conv(c4, 48, 32, k=1, pad=0, bn=False, bias=True, act=None)
    p3 = e.op("Add", [e.resize2x(p4), e.conv(c3, 32, 32, k=1, pad=0, bn=False, bias=True, act=None)])
    w = e.const(e.rng.normal(0, 0.1, (32, 32, 2, 2)).astype(np.float32), "deconv_w")
    up = e.op("ConvTranspose", [p3, w, e.const(np.zeros(32, np.float32))], kernel_shape=[2, 2], strides=[2, 2])
    p2 = e.op("Add", [up, e.conv(c2, 24, 32, k=1, pad=0, bn=False, bias=True, act=None)])
    boxes, scores = [], []
    for p in (p2, p3, p4):
        feat = e.conv(p, 32, 32)
        boxes.append(_head(e, e.conv(feat, 32, 4, k=1, pad=0, bn=False, bias=True, act=None), 4))
        scores.append(_head(e, e.conv(feat, 32, 3, k=1, pad=0, bn=False, bias=True, act=None), 3))
    e.output(e.op("Concat", boxes, axis=1), "boxes")
    e.output(e.op("Sigmoid", [e.op("Concat", scores, axis=1)]), "scores")


def unet(e: Exporter) -> None:
    """A segmentation U-Net: strided encoder, decoder upsampling by ConvTranspose 4x4 stride 2
    pad 1 (DCGAN's and pix2pix's, with a BatchNorm after it) and 2x2 stride 2 (with a bias),
    skip connections by Concat, per-pixel class scores."""
    x = e.input("input", IMAGE)
    f1 = e.conv(x, 3, 16)
    f2 = e.conv(f1, 16, 32, stride=2)
    f3 = e.conv(f2, 32, 48, stride=2)
    up = _conv_transpose(e, f3, 48, 32, k=4, pad=1, bn=True)
    d2 = e.conv(e.op("Concat", [up, f2], axis=1), 64, 32)
    up = _conv_transpose(e, d2, 32, 16, k=2, pad=0, bn=False)
    d1 = e.conv(e.op("Concat", [up, f1], axis=1), 32, 16)
    e.output(e.conv(d1, 16, 4, k=1, pad=0, bn=False, bias=True, act=None), "mask")


def _conv_transpose(e: Exporter, x: str, cin: int, cout: int, k: int, pad: int, bn: bool) -> str:
    """A 2x upsampling ConvTranspose [+ BatchNorm], ReLU."""
    w = e.const(e.rng.normal(0, np.sqrt(2.0 / (cin * k * k / 4)), (cin, cout, k, k)).astype(np.float32), "up_w")
    inputs = [x, w] if bn else [x, w, e.const(e.rng.normal(0, 0.1, cout).astype(np.float32), "up_b")]
    y = e.op("ConvTranspose", inputs, kernel_shape=[k, k], strides=[2, 2], pads=[pad] * 4)
    return e.activation(e.batchnorm(y, cout) if bn else y, "relu")


def _head(e: Exporter, x: str, k: int) -> str:
    """[N, K, H, W] -> [N, H*W, K], the batch read with Shape."""
    batch = e.unsqueeze(e.op("Gather", [e.op("Shape", [x]), e.const(np.array(0, np.int64))], axis=0), [0])
    nhwc = e.op("Transpose", [x], perm=[0, 2, 3, 1])
    return e.op("Reshape", [nhwc, e.op("Concat", [batch, e.const(np.array([-1, k], np.int64))], axis=0)])


def text_recognizer(e: Exporter) -> None:
    """CRNN/transformer-style: conv backbone, width as sequence, one attention block, per-step classes."""
    x = e.input("input", ["batch", 1, 32, 64])
    x = e.conv(e.conv(e.conv(x, 1, 16), 16, 32, stride=2), 32, 48, stride=2)  # [N, 48, 8, 16]
    x = e.op("MaxPool", [x], kernel_shape=[8, 1], strides=[8, 1])             # [N, 48, 1, 16]
    seq = e.op("Transpose", [e.axes_op("Squeeze", x, [2], 13)], perm=[0, 2, 1])  # [N, 16, 48]
    d = 48
    q, k, v = (e.matmul(seq, d, d) for _ in range(3))
    scores = e.op("Div", [e.op("MatMul", [q, e.op("Transpose", [k], perm=[0, 2, 1])]),
                          e.const(np.float32(np.sqrt(d)))])
    attended = e.matmul(e.op("MatMul", [e.op("Softmax", [scores], axis=-1 if e.opset >= 13 else 2), v]), d, d)
    h = e.layer_norm(e.op("Add", [seq, attended]), d)
    h = e.layer_norm(e.op("Add", [h, e.matmul(e.gelu(e.matmul(h, d, 2 * d)), 2 * d, d)]), d)
    e.output(e.op("LogSoftmax", [e.matmul(h, d, 20)], axis=-1 if e.opset >= 13 else 2), "log_probs")


def tflite_net(e: Exporter) -> None:
    """tflite -> ONNX: NHWC input, batch fixed at 1, Transposes around every conv, two heads of very
    different ranges concatenated (as a face detector's box and score outputs are)."""
    x = e.input("input", [1, 32, 32, 3])

    def conv_nhwc(t, cin, cout, **kw):
        nchw = e.op("Transpose", [t], perm=[0, 3, 1, 2])
        return e.op("Transpose", [e.conv(nchw, cin, cout, bn=False, bias=True, **kw)], perm=[0, 2, 3, 1])

    x = conv_nhwc(x, 3, 16, stride=2, act="relu")
    x = conv_nhwc(x, 16, 16, groups=16, act="relu")
    x = conv_nhwc(x, 16, 32, k=1, pad=0, stride=1, act="relu")
    x = conv_nhwc(x, 32, 32, stride=2, act="relu")  # [1, 8, 8, 32]
    scores = e.op("Reshape", [conv_nhwc(x, 32, 2, k=1, pad=0, act=None), e.const(np.array([1, -1, 1], np.int64))])
    raw = conv_nhwc(x, 32, 16, k=1, pad=0, act=None)
    boxes = e.op("Mul", [raw, e.const(np.float32(60.0))])  # box offsets in pixels: a range ~100x the scores'
    boxes = e.op("Reshape", [boxes, e.const(np.array([1, -1, 1], np.int64))])
    e.output(e.op("Concat", [boxes, scores], axis=1), "regressors")


def lcnet_paddle(e: Exporter) -> None:
    """PP-LCNet as Paddle2ONNX writes it: hardswish as x*clip(x+3,0,6)/6, SE gates, Reshape [0, -1]."""
    x = e.input("input", IMAGE)
    x = e.conv(x, 3, 16, stride=2, act="hardswish-decomposed")
    for cin, cout, stride, se in ((16, 32, 1, False), (32, 64, 2, False), (64, 64, 1, True), (64, 128, 2, True)):
        y = e.conv(x, cin, cin, stride=stride, groups=cin, act="hardswish-decomposed")
        if se:
            y = e.squeeze_excite(y, cin, cin // 4)
        x = e.conv(y, cin, cout, k=1, pad=0, act="hardswish-decomposed")
    x = e.conv(e.op("GlobalAveragePool", [x]), 128, 256, k=1, pad=0, bn=False, act="hardswish-decomposed")
    flat = e.op("Reshape", [x, e.const(np.array([0, -1], np.int64))])
    e.output(e.gemm(flat, 256, 10), "logits")


RECIPES: dict[str, Callable[[Exporter], None]] = {
    "resnet": resnet, "mobilenet_v2": mobilenet_v2, "mobilenet_v3": mobilenet_v3,
    "efficientnet_lite": efficientnet_lite, "shufflenet": shufflenet, "densenet": densenet,
    "inception": inception, "squeezenet": squeezenet, "fpn_detector": fpn_detector,
    "text_recognizer": text_recognizer, "tflite_net": tflite_net, "lcnet_paddle": lcnet_paddle, "unet": unet,
}

#: (recipe, opset) pairs: each family at an old opset its exporters still write, and a new one.
CORPUS: list[tuple[str, int]] = [
    ("resnet", 11), ("resnet", 17), ("mobilenet_v2", 13), ("mobilenet_v2", 18), ("mobilenet_v3", 11),
    ("mobilenet_v3", 17), ("efficientnet_lite", 12), ("efficientnet_lite", 17), ("shufflenet", 11),
    ("shufflenet", 13), ("densenet", 9), ("densenet", 17), ("inception", 9), ("inception", 13),
    ("squeezenet", 9), ("squeezenet", 21), ("fpn_detector", 11), ("fpn_detector", 17),
    ("text_recognizer", 13), ("text_recognizer", 20), ("tflite_net", 13), ("lcnet_paddle", 11),
    ("unet", 11), ("unet", 17),
]

#: Input shapes to calibrate and compile with (the detector's height and width are dynamic).
CALIB_SHAPES = {"fpn_detector": {"input": (3, 64, 64)}}


def build(name: str, opset: int, seed: int = 0) -> onnx.ModelProto:
    exporter = Exporter(f"{name}-opset{opset}", opset, seed)
    RECIPES[name](exporter)
    return exporter.model()


def sample_inputs(proto: onnx.ModelProto, count: int, seed: int = 0, name: str | None = None) -> dict[str, np.ndarray]:
    """Random inputs for a corpus model: `count` samples (fixed batch-1 models get count as dim 0 too)."""
    rng = np.random.default_rng(seed)
    name = name or proto.graph.name.rsplit("-opset", 1)[0]
    feeds = {}
    for value in proto.graph.input:
        dims = [d.dim_value for d in value.type.tensor_type.shape.dim]
        shape = CALIB_SHAPES.get(name, {}).get(value.name) or tuple(dims[1:])
        feeds[value.name] = rng.standard_normal((count, *shape)).astype(np.float32)
    return feeds


def main(argv: list[str]) -> int:
    out = Path(argv[0] if argv else "corpus")
    out.mkdir(parents=True, exist_ok=True)
    for name, opset in CORPUS:
        path = out / f"{name}-opset{opset}.onnx"
        onnx.save_model(build(name, opset), str(path))
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
