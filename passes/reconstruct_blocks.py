"""reconstruct-blocks: BRECQ post-training reconstruction of an annotated, calibrated model.

Blocks (partition-blocks) are reconstructed in graph order. Each block reads its inputs as the
quantized network computes them (earlier blocks already reconstructed) and learns to reproduce
the float network's block outputs: first the rounding of its weights (AdaRound, activations
off), then its activation step sizes (weights rounded); or, with QDrop, both at once while
activation quantization is dropped at random. Two caches of the live tensors between blocks
(float and quantized) are carried forward, over at most `samples` calibration samples.

The learned rounding is stored as integers on the weights' TensorQuant (insert-qdq writes them
instead of rounding to nearest); learned step sizes replace the activations' scales, and learned
biases (ReconstructConfig.bias_lr > 0) the layers' bias constants. The time
estimate made before the first block (qcompiler.sim.estimate) is `estimate` and
model.analysis["reconstruct-blocks estimate"].
"""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler.blocks import BlockReport, ReconstructConfig
from qcompiler.data import Dataset
from qcompiler.errors import PassError
from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.passes.partition_blocks import partition
from qcompiler.quant.spec import QuantParams
from qcompiler.registry import register


@register("reconstruct-blocks")
class ReconstructBlocks(Pass):
    """Learn weight rounding and activation step sizes block by block (see the module docstring)."""

    def __init__(self, data: Dataset | None = None, config: ReconstructConfig | None = None,
                 progress: bool = True) -> None:
        self.data, self.config, self.progress = data, config or ReconstructConfig(), progress
        self.reports: list[BlockReport] = []
        self.estimate = None

    def requires(self, model: Model) -> None:
        if model.quant and self.data is None:
            raise PassError("reconstruct-blocks needs calibration data: ReconstructBlocks(data=...)")
        if any(tq.params is None for tq in model.quant.values()):
            raise PassError("reconstruct-blocks: run calibrate-ranges first (some tensors have no params)")

    def call(self, model: Model) -> PassResult:
        if not any(tq.role == "weight" for tq in model.quant.values()):
            return PassResult(model, False)
        from qcompiler.sim.blockwise import Reconstruction  # jax loads only when a model is reconstructed

        run = Reconstruction(model, partition(model, self.config.granularity), self.data, self.config, self.progress)
        params = run.all_blocks()
        self.reports, self.estimate = run.reports, run.estimate
        model.analysis[self.name] = list(run.reports)
        model.analysis[f"{self.name} estimate"] = run.estimate
        _write_back(model, params)
        return PassResult(model, True)


def _write_back(model: Model, params: dict) -> None:
    """Learned integers onto the weights' annotations, learned biases into the layers that add them
    (as their input 2), learned step sizes onto their activation groups."""
    from qcompiler.sim.quantized import learned_integers

    tensors = model.tensors()
    for name, value in params["weights"].items():   # learned biases (ReconstructConfig.bias_lr)
        if name not in model.quant:
            for layer in model.consumers(tensors[name]):
                if model.input_or_none(layer, 2) is tensors[name]:
                    model.set_const_input(layer, 2, np.asarray(value, np.float32))
    for name, integers in learned_integers(params, model.quant).items():
        model.quant[name] = dataclasses.replace(model.quant[name], rounded=integers)
    for name, tq in model.quant.items():
        if tq.role == "activation" and (tq.group or name) in params["act"]:
            scale = np.asarray(params["act"][tq.group or name][0], np.float32).reshape(tq.params.scale.shape)
            if not np.array_equal(scale, tq.params.scale):
                model.quant[name] = tq.with_params(QuantParams(scale=scale, zero_point=tq.params.zero_point))
