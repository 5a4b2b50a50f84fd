"""untie-concats: after calibration, untie each Concat whose inputs have very different ranges.

The finding is qcompiler.quant.ties.narrow_concat_inputs (a detector's scores concatenated with
box offsets in pixels keep under 4 of 8 bits at a shared scale). The remedy needs the
annotation redone, so this pass re-runs annotate-quant with those Concats named in
`QuantConfig.untied_concats`, and calibrate-ranges after it; the graph is not touched.
What it untied, and why, is the model's `analysis["untie-concats"]` (Concat name -> reason).
"""

from __future__ import annotations

import dataclasses
import logging

from qcompiler.data import Dataset
from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.passes.annotate_quant import AnnotateQuant
from qcompiler.passes.calibrate_ranges import CalibrateRanges
from qcompiler.quant.presets import QuantConfig
from qcompiler.quant.ties import narrow_concat_inputs
from qcompiler.registry import register

log = logging.getLogger(__name__)


class Reannotating(Pass):
    """A pass that, having found a remedy after calibration, annotates the model again with a
    changed QuantConfig and calibrates it again (untie-concats, widen-activations)."""

    def __init__(self, config: QuantConfig | None = None, data: Dataset | None = None, batch_size: int | None = None,
                 progress: bool = True) -> None:
        self.config, self.data, self.batch_size, self.progress = config or QuantConfig(), data, batch_size, progress

    def reannotated(self, model: Model, config: QuantConfig) -> Model:
        model.quant = {}
        model = AnnotateQuant(config)(model).model
        return CalibrateRanges(self.data, self.batch_size, self.progress)(model).model


@register("untie-concats")
class UntieConcats(Reannotating):
    """Give the inputs of a Concat with very different ranges their own scales (re-annotate, re-calibrate)."""

    def call(self, model: Model) -> PassResult:
        untied = narrow_concat_inputs(model)
        model.analysis[self.name] = untied
        if not untied:
            return PassResult(model, False)
        for concat, reason in untied.items():
            log.warning("Concat %s: %s; its inputs keep their own scales and it runs in float", concat, reason)
        model = self.reannotated(model, dataclasses.replace(self.config, untied_concats=frozenset(untied)))
        return PassResult(model, True)
