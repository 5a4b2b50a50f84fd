"""correct-bias: remove the mean output shift that rounding a layer's weights causes.

Rounding W to W_q changes a layer's output by (W_q - W) x. Its mean over the data, (W_q - W) E[x],
is a systematic shift per output channel: rounding errors that happen to lean one way in a channel
with few weights (a depthwise 3x3 has nine) move the whole channel, and ReLUs and the following
layers do not average it out. Bias correction (Nagel et al. 2019, "Data-Free Quantization", §4.2;
AIMET's bias correction) subtracts it from the bias, with E[x] per input channel measured by
running the float model on the calibration data. Border pixels of padded convolutions see zeros,
which this mean ignores (as the paper does).

After reconstruction (`guarded=True`) the correction is kept only where it raises the SQNR of
the model's (first) output on the calibration data, and the summary says which happened: a
converged reconstruction is better without it (learned rounding may lean one way on purpose, to
cancel the error of the blocks before, which (W_q - W) E[x] undoes), a short one far better with
it (benchmarks/results/lowbit.md and mixed_imagenet_brecq.md have the measurements). Measuring
the shift on the quantized model instead, layer by layer (AIMET's empirical bias correction), was
tried and did worse on the ImageNet MobileNetV2 (53.7% agreement after 40 BRECQ iterations,
against 61.1% with this form and 38.9% with none).

Applies to Conv (grouped and depthwise too) and Gemm whose weight is quantized; a Conv without a
bias gets one. MatMul (no bias input) and ConvTranspose are left as they are. Matters most at 4
bits and on depthwise layers; benchmarks/results/ptq.md has the measurements.
"""

from __future__ import annotations

import numpy as np

from qcompiler.data import Dataset
from qcompiler.errors import PassError
from qcompiler.executor import session
from qcompiler.ir import Model, Node
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.passes.calibrate_ranges import observation_batch_size
from qcompiler.progress import Progress
from qcompiler.quant.annotation import quantized_weight
from qcompiler.registry import register


@register("correct-bias")
class CorrectBias(Pass):
    """Fold the mean effect of weight rounding into each quantized layer's bias (see the module docstring)."""

    def __init__(self, data: Dataset | None = None, batch_size: int | None = None, progress: bool = True, *,
                 guarded: bool = False) -> None:
        self.data, self.batch_size, self.progress, self.guarded = data, batch_size, progress, guarded
        #: After a run: layer name -> the largest change this pass made to one of its biases (also
        #: the model's `analysis["correct-bias"]`).
        self.shifts: dict[str, float] = {}
        #: After a guarded run: the output's SQNR (dB) on the data without and with the
        #: correction (kept only if higher); also `analysis["correct-bias output sqnr"]`.
        self.output_sqnr: tuple[float, float] | None = None

    def requires(self, model: Model) -> None:
        if any(tq.role == "weight" and tq.params is None for tq in model.quant.values()):
            raise PassError("correct-bias: run calibrate-ranges first (some weights have no params)")
        if self.data is None and correctable_layers(model):
            raise PassError("correct-bias needs calibration data: CorrectBias(data=...)")

    def call(self, model: Model) -> PassResult:
        self.shifts, self.output_sqnr = {}, None
        corrected = model.copy() if self.guarded else model
        layers = correctable_layers(corrected)
        if not layers:
            return PassResult(model, False)
        means = self._input_means(corrected, layers)
        for layer in layers:
            self._shift_bias(corrected, layer, rounding_shift(corrected, layer, means[layer.inputs[0].name]))
        if self.guarded:
            corrected = self._better_of(model, corrected)
        corrected.analysis[self.name] = dict(self.shifts)
        if self.output_sqnr is not None:
            corrected.analysis[f"{self.name} output sqnr"] = self.output_sqnr
        return PassResult(corrected, bool(self.shifts))

    def _better_of(self, model: Model, corrected: Model) -> Model:
        """`corrected` if its output's SQNR on the data is higher than `model`'s, else `model` (no shifts)."""
        from qcompiler.evaluation import evaluate
        from qcompiler.passes.insert_qdq import InsertQDQ

        self.output_sqnr = tuple(evaluate(model, InsertQDQ()(candidate.copy()).model, self.data, progress=False).sqnr_db
                                 for candidate in (model, corrected))
        if self.output_sqnr[1] > self.output_sqnr[0]:
            return corrected
        self.shifts = {}
        return model

    def _shift_bias(self, model: Model, layer: Node, shift: np.ndarray) -> None:
        bias = model.const_value(model.input_or_none(layer, 2))
        bias = np.zeros(shift.shape, np.float32) if bias is None else bias
        model.set_const_input(layer, 2, (bias - shift).astype(np.float32), name=f"{layer.name}_bias")
        self.shifts[layer.name] = float(np.abs(shift).max())

    def _input_means(self, model: Model, layers: list[Node]) -> dict[str, np.ndarray]:
        """Mean of each layer's input per channel over the calibration data, float model. The
        per-batch means are reduced inside onnxruntime, then weighted by batch size: exposing every
        input and reducing in numpy added 7.3 s to a 512-image MobileNetV2 quantize, this 2.5 s."""
        probe, outputs = _with_channel_means(model, layers)
        runner = session(probe)
        batch = self.batch_size or observation_batch_size(model, [layer.inputs[0].name for layer in layers])
        sums, count = dict.fromkeys(outputs, 0.0), 0
        bar = Progress("bias correction (input means)", -(-self.data.count // batch), self.progress)
        for feeds in self.data.batches(batch):
            samples = len(next(iter(feeds.values())))
            for name, mean in zip(outputs, runner.run(list(outputs.values()), feeds)):
                sums[name] = sums[name] + samples * mean.astype(np.float64)
            count += samples
            bar.advance()
        bar.close()
        return {name: total / count for name, total in sums.items()}


def _with_channel_means(model: Model, layers: list[Node]) -> tuple[Model, dict[str, str]]:
    """A copy of `model` with a ReduceMean over every axis but the channel axis of each layer's
    input; returns it and {input name: name of its channel-mean output}."""
    probe = model.copy()
    tensors = probe.tensors()
    outputs = {}
    for layer in layers:
        name = layer.inputs[0].name
        if name in outputs:
            continue
        rank = 2 if layer.op == "Gemm" else model.const_value(layer.inputs[1]).ndim
        axes = [a for a in range(rank) if a != _channel_axis(layer)]
        mean = probe.variable(f"{name}_channel_mean", np.float32)
        inputs, attrs = [tensors[name]], {"keepdims": 0}
        if probe.opset >= 18:  # axes became an input in opset 18
            inputs.append(probe.constant(f"{name}_mean_axes", np.array(axes, np.int64)))
        else:
            attrs["axes"] = axes
        probe.add_node("ReduceMean", inputs, [mean], attrs, name=f"{name}_channel_mean")
        probe.graph.outputs.append(mean)
        outputs[name] = mean.name
    probe.finalize()
    return probe, outputs


def correctable_layers(model: Model) -> list[Node]:
    """Conv and Gemm layers whose weight is quantized and whose bias (if any) is a 1-D constant."""
    layers = []
    for node in model.graph.nodes:
        weight = model.input_or_none(node, 1)
        if node.op not in ("Conv", "Gemm") or weight is None or weight.name not in model.quant:
            continue
        bias_t = model.input_or_none(node, 2)
        bias = model.const_value(bias_t)
        if bias_t is not None and (bias is None or bias.ndim != 1):
            continue
        if node.op == "Gemm" and (node.attrs.get("alpha", 1.0) != 1.0 or node.attrs.get("beta", 1.0) != 1.0):
            continue
        layers.append(node)
    return layers


def rounding_shift(model: Model, layer: Node, input_mean: np.ndarray) -> np.ndarray:
    """(W_q - W) E[x] per output channel of a Conv or Gemm, in float64."""
    weight = model.const_value(layer.inputs[1])
    error = quantized_weight(weight, model.quant[layer.inputs[1].name]).astype(np.float64) - weight
    if layer.op == "Gemm":
        return error @ input_mean if layer.attrs.get("transB", 0) else input_mean @ error
    groups = layer.attrs.get("group", 1)
    out_channels, in_per_group = error.shape[:2]
    per_group = error.reshape(groups, out_channels // groups, in_per_group, -1).sum(axis=3)
    return np.einsum("goc,gc->go", per_group, input_mean.reshape(groups, in_per_group)).reshape(out_channels)


def _channel_axis(layer: Node) -> int:
    """Axis of the input's channels (features): NCHW for Conv; Gemm's A is (N, K), or (K, N) when transA."""
    return 0 if layer.op == "Gemm" and layer.attrs.get("transA", 0) else 1
