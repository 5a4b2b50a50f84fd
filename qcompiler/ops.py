"""Which ONNX ops qcompiler handles, and which of them it quantizes (the layers with weights).

"Supported" means the whole pipeline (calibration, simulation, QDQ export, TVM lowering) is
built to handle the op once canonicalize and fold-batchnorm have run; ops that those passes
remove (Identity, Dropout, BatchNormalization, shape arithmetic folded to constants) count too.
"""

from __future__ import annotations

#: Layers whose weight input is quantized per output channel and whose input activation is quantized.
QUANTIZED_LAYERS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})

#: The one table of ops that stay on their input's integer grid: the output keeps the input's
#: scale and zero point (values pass through, or are averaged on the same grid). annotate-quant
#: ties their quantization to the input's; the TVM integer rewrite moves the Relax op each
#: imports as onto the integers unchanged (None: the rewrite has a lowering of its own, the
#: integer average pools).
PASS_THROUGH: dict[str, str | None] = {
    "MaxPool": "relax.nn.max_pool2d", "Reshape": "relax.reshape", "Flatten": "relax.flatten",
    "Transpose": "relax.permute_dims", "Squeeze": "relax.squeeze", "Unsqueeze": "relax.expand_dims",
    "AveragePool": None,
}

SUPPORTED_OPS = QUANTIZED_LAYERS | frozenset({
    # elementwise and activations
    "Add", "Sub", "Mul", "Div", "Sum", "Relu", "Clip", "Sigmoid", "HardSigmoid", "HardSwish",
    "Tanh", "LeakyRelu", "Softmax",
    # pooling and layout
    "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose", "Concat",
    "Pad", "Resize", "Squeeze", "Unsqueeze",
    # removed or folded by canonicalize / fold-batchnorm
    "BatchNormalization", "Identity", "Dropout", "Constant",
    # already-quantized models
    "QuantizeLinear", "DequantizeLinear",
})
