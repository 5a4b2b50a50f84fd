"""What annotate-quant records per tensor, and the placement rules' op tables."""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler import ops
from qcompiler.quant.maths import dequantize, fake_quantize
from qcompiler.quant.spec import QuantParams, QuantSpec

#: Ops whose output may absorb a following Relu/Clip: quantize after the activation, not before.
FUSABLE_PRODUCERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"})
FUSED_ACTIVATIONS = frozenset({"Relu", "Clip"})
#: Ops whose output is quantized with their input's scale and zero point (qcompiler.ops's table).
PASS_THROUGH = frozenset(ops.PASS_THROUGH)


@dataclasses.dataclass(frozen=True, eq=False)
class TensorQuant:
    """A tensor's quantization: spec, role, calibrated params, and the group whose params it shares."""

    spec: QuantSpec
    role: str  # "weight" or "activation"
    params: QuantParams | None = None
    group: str | None = None  # activations only: the representative tensor of its tie group
    layer: str = ""  # weights: the layer that reads it
    #: Weights only: integer values learned by reconstruction (AdaRound), which insert-qdq
    #: stores instead of rounding to nearest; None means round to nearest.
    rounded: np.ndarray | None = None
    #: Activations: the range calibration observed for this tensor itself (its group's params may be wider).
    observed: tuple[float, float] | None = None

    def with_params(self, params: QuantParams, observed: tuple[float, float] | None = None) -> TensorQuant:
        return dataclasses.replace(self, params=params, observed=observed or self.observed)


def weight_values(model) -> dict[str, np.ndarray]:
    """The float value of every weight annotated on `model` (a qcompiler.ir.Model)."""
    tensors = model.tensors()
    return {name: model.const_value(tensors[name]) for name, tq in model.quant.items() if tq.role == "weight"}


def quantized_weight(values: np.ndarray, tq: TensorQuant) -> np.ndarray:
    """The float value a quantized weight computes with: learned integers (AdaRound) when the
    annotation has them, else round to nearest; what insert-qdq writes, dequantized."""
    return fake_quantize(values, tq.params, tq.spec) if tq.rounded is None else dequantize(tq.rounded, tq.params, tq.spec)
