"""insert-qdq: turn calibrated QuantSpecs into standard QuantizeLinear/DequantizeLinear.

After this pass the quantization lives only in the ONNX graph (docs/architecture.md, conventions):
- activation t:  t -> QuantizeLinear -> [Clip, below 8 bits] -> DequantizeLinear -> readers of t
  (uint8; below 8 bits the uint8 values are clipped to the smaller grid. Not UINT4: onnxruntime
  1.31's default graph optimizer (ClipQuantFusion) aborts the session on a UINT4 zero point after
  a Relu/Clip, and TVM's importer rejects INT4 initializers, so 4-bit activations as UINT4 would
  not run where users run them);
- weight W: an int8 (or INT4, for 4 bits and below) initializer -> DequantizeLinear(axis) -> layer;
- bias b of a layer whose input and weight are quantized: int32 with scale s_x * s_w, zero point 0.
8-bit models need opset >= 13 (per-axis DequantizeLinear), INT4 needs opset 21: older models
are converted with onnx.version_converter first.
"""

from __future__ import annotations

import numpy as np
import onnx

from qcompiler.errors import PassError, UnsupportedModelError
from qcompiler.ir import INT4_DTYPES, Model, Node, Tensor
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.quant.maths import INT32_LIMIT, quantize
from qcompiler.quant.spec import QuantParams, QuantSpec
from qcompiler.registry import register


def storage_dtype(spec: QuantSpec) -> np.dtype:
    """The ONNX element type a spec's integers are stored in.

    Signed (weight) values of 4 bits and below are INT4 (2/3 bits on a smaller grid); unsigned
    (activation) values below 8 bits are uint8, clipped to their grid after QuantizeLinear.
    """
    if spec.bits == 16:
        return np.dtype(np.int16 if spec.signed else np.uint16)
    if spec.bits <= 4 and spec.signed:
        return INT4_DTYPES[0]
    return np.dtype(np.int8 if spec.signed else np.uint8)


def needed_opset(model: Model) -> int:
    """13 for per-axis 8-bit QDQ; 21 for INT4/UINT4 and 16-bit types."""
    specs = [tq.spec for tq in model.quant.values()]
    return 21 if any(storage_dtype(s) in INT4_DTYPES or s.bits == 16 for s in specs) else 13


@register("insert-qdq")
class InsertQDQ(Pass):
    """Materialize calibrated quantization as QuantizeLinear/DequantizeLinear nodes."""

    def requires(self, model: Model) -> None:
        missing = [name for name, tq in model.quant.items() if tq.params is None]
        if missing:
            raise PassError(f"insert-qdq: tensors {missing[:5]} have no calibrated params; run calibrate-ranges first")

    def __init__(self) -> None:
        #: After a run: each quantized tensor's name -> the name of its dequantized value in the
        #: output (for comparing float and quantized tensors layer by layer); also recorded in
        #: the output model's `analysis["insert-qdq"]`.
        self.dequantized: dict[str, str] = {}

    def call(self, model: Model) -> PassResult:
        self.dequantized = {}
        if not model.quant:
            return PassResult(model, False)
        model = upgrade_opset(model, needed_opset(model))
        tensors = model.tensors()
        for name, tq in model.quant.items():
            if tq.role == "weight":
                self._quantize_weight(model, tensors[name], tq)
        dequantized = {name: self._quantize_activation(model, tensors[name], tq.spec, tq.params)
                       for name, tq in model.quant.items() if tq.role == "activation"}
        model.quant = {}
        model.finalize()
        self.dequantized = {name: tensor.name for name, tensor in dequantized.items()}  # names after renames
        model.analysis[self.name] = dict(self.dequantized)
        return PassResult(model, True)

    def _quantize_weight(self, model: Model, weight: Tensor, tq) -> None:
        values = model.const_value(weight)
        q = quantize(values, tq.params, tq.spec) if tq.rounded is None else tq.rounded  # learned rounding
        q = q.astype(storage_dtype(tq.spec))
        readers = model.consumers(weight)
        dq = self._dequantize(model, model.constant(f"{weight.name}_quantized", q), tq.params, f"{weight.name}_dq",
                              tq.spec.axis)
        for reader in readers:
            reader.inputs[[i for i, t in enumerate(reader.inputs) if t is weight][0]] = dq
            self._quantize_bias(model, reader, tq)

    def _quantize_bias(self, model: Model, layer: Node, weight_tq) -> None:
        """Bias as int32 with scale s_x * s_w (per channel), so the integer kernel adds it exactly."""
        bias_t = model.input_or_none(layer, 2)
        bias = model.const_value(bias_t)
        x_tq = model.quant.get(layer.inputs[0].name)
        if bias is None or x_tq is None or bias.ndim != 1 or layer.attrs.get("beta", 1.0) != 1.0:
            return
        scale = (x_tq.params.scale.astype(np.float64) * weight_tq.params.scale.astype(np.float64)).astype(np.float32)
        if scale.size not in (1, bias.size):
            return
        q = np.clip(np.rint(bias.astype(np.float64) / scale), -INT32_LIMIT, INT32_LIMIT).astype(np.int32)
        params = QuantParams(scale=scale, zero_point=np.zeros_like(scale, dtype=np.int32))
        dq = self._dequantize(model, model.constant(f"{bias_t.name}_quantized", q), params, f"{bias_t.name}_dq", 0)
        layer.inputs[2] = dq

    def _quantize_activation(self, model: Model, tensor: Tensor, spec: QuantSpec, params: QuantParams) -> Tensor:
        """Q -> [Clip] -> DQ after `tensor`; returns the dequantized tensor that now feeds its readers."""
        dtype = storage_dtype(spec)
        scale = model.constant(f"{tensor.name}_scale", params.scale.astype(np.float32).reshape(()))
        zero = model.constant(f"{tensor.name}_zero_point", params.zero_point.astype(dtype).reshape(()))
        quantized = model.variable(f"{tensor.name}_q", dtype=dtype, shape=tensor.shape)
        q_node = model.add_node("QuantizeLinear", [tensor, scale, zero], [quantized], name=f"{tensor.name}_quantize")
        if spec.bits < 8 and dtype in (np.uint8, np.int8):  # low-bit activations: uint8 clipped to the grid
            lo = model.constant(f"{tensor.name}_qmin", np.array(spec.qmin, dtype))
            hi = model.constant(f"{tensor.name}_qmax", np.array(spec.qmax, dtype))
            clipped = model.variable(f"{tensor.name}_qc", dtype=dtype, shape=tensor.shape)
            model.add_node("Clip", [quantized, lo, hi], [clipped], name=f"{tensor.name}_grid")
            quantized = clipped
        dequantized = model.variable(f"{tensor.name}_dq", dtype=tensor.dtype, shape=tensor.shape)
        model.add_node("DequantizeLinear", [quantized, scale, zero], [dequantized], name=f"{tensor.name}_dequantize")
        model.replace_all_uses(tensor, dequantized, except_for=q_node)  # may rename a graph output
        return dequantized

    @staticmethod
    def _dequantize(model: Model, q: Tensor, params: QuantParams, name: str, axis: int | None) -> Tensor:
        """A DequantizeLinear of constant `q`: per axis when the params are per channel."""
        per_axis = axis is not None and params.scale.ndim == 1
        scale = model.constant(f"{name}_scale", params.scale.astype(np.float32) if per_axis else params.scale.reshape(()))
        zp_values = params.zero_point.astype(q.values.dtype)
        zero = model.constant(f"{name}_zero_point", zp_values if per_axis else zp_values.reshape(()))
        out = model.variable(name, dtype=np.float32, shape=list(q.values.shape))
        attrs = {"axis": axis} if per_axis else {}
        model.add_node("DequantizeLinear", [q, scale, zero], [out], attrs, name=f"{name}_node")
        return out


def upgrade_opset(model: Model, target: int) -> Model:
    """The model converted to `target` if its opset is lower (quantization annotations kept)."""
    if model.opset >= target:
        return model
    try:
        converted = onnx.version_converter.convert_version(model.to_onnx(), target)
    except Exception as exc:  # the converter raises bare RuntimeErrors and more
        raise UnsupportedModelError(f"{model.path or 'model'}: cannot convert from opset {model.opset} to {target}, "
                                    f"which QDQ needs: {str(exc).splitlines()[0]}") from None
    upgraded = Model.from_onnx(onnx.shape_inference.infer_shapes(converted), path=model.path)
    upgraded.metadata, upgraded.quant, upgraded.analysis = model.metadata, model.quant, model.analysis
    return upgraded
