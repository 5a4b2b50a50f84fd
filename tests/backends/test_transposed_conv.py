"""The phase decomposition of a transposed convolution, against onnxruntime's ConvTranspose
(float32; the decomposition in float64 on the same values): a stride-1 convolution onto stride x stride phase channels, a depth-to-space and a crop
give the same output for kernels smaller than, equal to and larger than the stride, symmetric
and asymmetric padding and output padding."""

from __future__ import annotations

import itertools

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from qcompiler.backends.tvm.transposed_conv import phase_conv

CASES = [(k, s, p, op) for k, s, p, op in itertools.product(
    [(2, 2), (3, 3), (4, 4), (3, 2), (1, 1), (5, 3)], [(2, 2), (1, 1), (3, 2)],
    [(0, 0, 0, 0), (1, 1, 1, 1), (1, 0, 2, 1)], [(0, 0), (1, 0)]) if all(o < t for o, t in zip(op, s))]


def conv_transpose(x, w, **attrs):
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape),
                                            helper.make_tensor_value_info("w", TensorProto.FLOAT, w.shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.astype(np.float32), "w": w.astype(np.float32)})[0]


def conv_stride1(x, w, padding):
    top, left, bottom, right = padding
    padded = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    kh, kw = w.shape[2:]
    height, width = padded.shape[2] - kh + 1, padded.shape[3] - kw + 1
    return sum(np.einsum("nchw,oc->nohw", padded[:, :, i:i + height, j:j + width], w[:, :, i, j])
               for i in range(kh) for j in range(kw))


@pytest.mark.parametrize("kernel,strides,pads,output_padding", CASES)
def test_phases_compute_the_transposed_convolution(kernel, strides, pads, output_padding):
    rng = np.random.default_rng(0)
    x, w = (rng.normal(size=shape).astype(np.float32).astype(np.float64) for shape in ((2, 3, 5, 4), (3, 4, *kernel)))
    expected = conv_transpose(x, w, kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                              output_padding=list(output_padding))
    phase = phase_conv(w, strides, pads[:2], x.shape[2:], expected.shape[2:])
    if phase is None:   # declined only where the leading padding reaches past the phases (a 1x1 kernel, pad 1)
        assert any(p // s >= -(-k // s) for k, s, p in zip(kernel, strides, pads[:2]))
        return
    z = conv_stride1(x, phase.weight, phase.padding)
    (sh, sw), (qh, qw), (top, left) = strides, phase.size, phase.crop
    assert z.shape[2:] == (qh, qw)
    moved = z.reshape(2, 4, sh, sw, qh, qw).transpose(0, 1, 4, 2, 5, 3).reshape(2, 4, qh * sh, qw * sw)
    np.testing.assert_allclose(moved[:, :, top:top + expected.shape[2], left:left + expected.shape[3]], expected,
                               atol=1e-5)


def test_a_padding_beyond_the_phases_is_declined():
    """Leading padding past a whole period of phases would crop the input itself: left float."""
    assert phase_conv(np.ones((1, 1, 2, 2)), (2, 2), (4, 4), (5, 5), (2, 2)) is None


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
@pytest.mark.parametrize("kernel,strides", [((3, 3), (2, 2)), ((4, 5), (2, 3)), ((5, 2), (1, 1))])
def test_a_node_with_auto_pad_takes_the_padding_the_spec_gives(auto_pad, kernel, strides):
    """A node's auto_pad read as the importer reads it (begin_pads, which node_phase_conv uses for
    the cost model and wild.py): the phase conv computes onnxruntime's ConvTranspose."""
    from qcompiler.backends.tvm.transposed_conv import begin_pads, node_phase_conv

    rng = np.random.default_rng(1)
    x, w = (rng.normal(size=shape).astype(np.float32).astype(np.float64) for shape in ((1, 3, 5, 4), (3, 2, *kernel)))
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "auto_pad": auto_pad}
    expected = conv_transpose(x, w, **attrs)
    phase = phase_conv(w, strides, begin_pads(attrs, kernel, strides), x.shape[2:], expected.shape[2:])
    assert node_phase_conv(attrs, w.shape, x.shape[2:], expected.shape[2:]).padding == phase.padding
    z = conv_stride1(x, phase.weight, phase.padding)
    (sh, sw), (qh, qw), (top, left) = strides, phase.size, phase.crop
    moved = z.reshape(1, 2, sh, sw, qh, qw).transpose(0, 1, 4, 2, 5, 3).reshape(1, 2, qh * sh, qw * sw)
    np.testing.assert_allclose(moved[:, :, top:top + expected.shape[2], left:left + expected.shape[3]], expected,
                               atol=1e-5)
