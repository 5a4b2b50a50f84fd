"""QDQ ONNX to Relax through TVM's ONNX frontend.

INT4/UINT4 initializers are widened to int8/uint8 first: the frontend cannot read them
(TVM's int4 path gives wrong results on CPU). A Resize's empty `roi` or `scales` initializer
(torch's F.interpolate(size=...) at opset 11 writes both empty, with `sizes`) is passed as an
omitted input, which is what it means: the frontend takes an empty `scales` beside `sizes` for
both given and stops. A Clip of a QuantizeLinear's integers to a narrower range (how a 4-bit
activation is written at opsets without UINT4 QuantizeLinear) is moved before the QuantizeLinear,
as the same clamp in float: the integer rewrite folds a float clamp into the producing layer's
requantization, where the integer Clip was a separate op that broke the kernels' layout chain. Shapes are fixed at import: a symbolic batch dimension gets the batch
size given; other dimensions must already be fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from qcompiler.errors import UnsupportedModelError

_WIDER = {onnx.TensorProto.INT4: np.int8, onnx.TensorProto.UINT4: np.uint8}


def widen_int4(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose 4-bit initializers are stored as 8-bit (same values)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for init in model.graph.initializer:
        if init.data_type in _WIDER:
            values = numpy_helper.to_array(init).astype(_WIDER[init.data_type])
            init.CopyFrom(numpy_helper.from_array(values, init.name))
    return model


def omit_empty_resize_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model (changed in place) with each Resize's empty roi/scales constant omitted ("")."""
    empty = {i.name for i in model.graph.initializer if 0 in i.dims}
    empty |= {n.output[0] for n in model.graph.node if n.op_type == "Constant"
              and any(a.name == "value" and 0 in a.t.dims for a in n.attribute)}
    for node in model.graph.node:
        if node.op_type == "Resize":
            node.input[:] = ["" if 1 <= k <= 2 and name in empty else name for k, name in enumerate(node.input)]
    return model


def clip_before_quantize(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model (changed in place) with each Clip(QuantizeLinear(x), lo, hi) of constant integer
    bounds, the Clip the QuantizeLinear's only reader, made QuantizeLinear(Clip(x, (lo - zp) * s,
    (hi - zp) * s)) for a per-tensor scale s and zero point zp. The same integers: x below
    (lo - zp) * s rounds to lo - zp or less, and exactly at the bound it rounds to lo - zp."""
    constants = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    outputs = {o.name for o in model.graph.output}
    renamed: dict[str, str] = {}
    kept = []
    for node in model.graph.node:
        quantize = producer.get(node.input[0]) if node.op_type == "Clip" and node.input else None
        if quantize is not None and quantize.input[0] not in producer:   # the network input: no layer
            quantize = None                                               # to fold a float clamp into
        bounds = _float_bounds(node, quantize, constants) if quantize is not None and quantize.op_type == \
            "QuantizeLinear" and readers.get(quantize.output[0]) == 1 and node.output[0] not in outputs else None
        if bounds is None:
            kept.append(node)
            continue
        clipped = f"{quantize.input[0]}__clip_before_{quantize.output[0]}"
        names = [f"{clipped}_min", f"{clipped}_max"]
        model.graph.initializer.extend(numpy_helper.from_array(np.float32(b), n) for b, n in zip(bounds, names))
        kept.insert(kept.index(quantize), onnx.helper.make_node("Clip", [quantize.input[0], *names], [clipped]))
        quantize.input[0] = clipped
        renamed[node.output[0]] = quantize.output[0]
    for node in kept:
        node.input[:] = [renamed.get(name, name) for name in node.input]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    return model


def _float_bounds(clip, quantize, constants: dict) -> tuple[float, float] | None:
    """(low, high) in float of an integer Clip after `quantize`, or None where it cannot move."""
    scale = constants.get(quantize.input[1])
    zero = constants.get(quantize.input[2]) if len(quantize.input) > 2 and quantize.input[2] else np.uint8(0)
    bounds = [constants.get(name) if name else None for name in list(clip.input[1:3]) + [""] * (3 - len(clip.input))]
    if scale is None or zero is None or scale.size != 1 or any(b is None or b.size != 1 for b in bounds):
        return None
    low, high = (float(b.reshape(())) for b in bounds)
    s, z = float(scale.reshape(())), float(zero.reshape(()))
    return np.float32((low - z) * s), np.float32((high - z) * s)


def input_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Static input shapes: a symbolic first dimension becomes `batch`; any other must be fixed already
    (by fold-shapes with the calibration data's shapes or --input-shape)."""
    initializers = {i.name for i in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initializers:
            continue
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in value.type.tensor_type.shape.dim]
        if None in dims[1:]:
            shown = ",".join(str(d) if d else "?" for d in dims)
            raise UnsupportedModelError(f"input {value.name!r} has dynamic dimensions [{shown}] beyond the batch: give "
                                        f"the shape to build for, e.g. --input-shape {value.name}="
                                        f"{','.join(str(d or 224) if i else '1' for i, d in enumerate(dims))}")
        shapes[value.name] = [batch if d is None else d for d in dims]
    return shapes


def import_qdq(model: onnx.ModelProto, batch: int = 1):
    """The model as a Relax IRModule with its weights as constants."""
    from tvm.relax.frontend.onnx import from_onnx

    model = clip_before_quantize(omit_empty_resize_inputs(widen_int4(model)))
    return from_onnx(model, shape_dict=input_shapes(model, batch), keep_params_in_input=False)
