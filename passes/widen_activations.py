"""widen-activations: after calibration, 16-bit activations where 8 bits would lose the signal.

The finding is qcompiler.quant.signal: the SQNR of a tensor's bulk (its values between the 1%
and 99% quantiles of each sample) at its calibrated 8-bit parameters, measured on up to
SAMPLES calibration samples. A tensor below `QuantConfig.widen_below_db` (default
MIN_BULK_SQNR_DB, 12 dB: a few values far out set a range on which the rest keep a handful of
steps) is quantized at 16 bits instead, with its tie group:
annotate-quant runs again with it in `QuantConfig.wide_activations`, then calibrate-ranges, and
the bulk SQNR is measured again. The QDQ model holds INT16 QuantizeLinear/DequantizeLinear there
(opset 21), which onnxruntime and the TVM backend run (integer layers whose int32 accumulator a
16-bit input could overflow stay float). Low-bit activations (4 bits and below) are the
preset's choice, not checked. What it widened, and the SQNR before and after, is the model's
`analysis["widen-activations"]` (tensor -> (dB at 8 bits, dB at 16)); the summary lists it.
"""

from __future__ import annotations

import dataclasses
import logging

from qcompiler.data import Dataset
from qcompiler.executor import session
from qcompiler.ir import Model
from qcompiler.pass_infra import PassResult
from qcompiler.passes.calibrate_ranges import observation_batch_size
from qcompiler.passes.untie_concats import Reannotating
from qcompiler.quant.signal import bulk_energies, sqnr_from
from qcompiler.registry import register

log = logging.getLogger(__name__)

#: Calibration samples the bulk SQNR is measured on (the quantiles sort each tensor per sample).
SAMPLES = 8


@register("widen-activations")
class WidenActivations(Reannotating):
    """Quantize at 16 bits the 8-bit activations whose bulk would lose its signal (re-annotate, re-calibrate)."""

    def call(self, model: Model) -> PassResult:
        model.analysis[self.name] = {}
        if not self.config.widen_activations or self.data is None:
            return PassResult(model, False)
        eight_bit = [n for n, tq in model.quant.items() if tq.role == "activation" and tq.spec.bits == 8 and tq.params]
        before = bulk_sqnr(model, eight_bit, self.data)
        narrow = {name: db for name, db in before.items() if db < self.config.widen_below_db}
        if not narrow:
            return PassResult(model, False)
        model = self.reannotated(model, dataclasses.replace(
            self.config, wide_activations=frozenset(narrow),
            untied_concats=frozenset(model.analysis.get("untie-concats", {}))))
        after = bulk_sqnr(model, list(narrow), self.data)
        model.analysis[self.name] = {name: (narrow[name], after[name]) for name in narrow}
        for name in narrow:
            log.warning("activation %s: its typical values keep %.1f dB at 8 bits (a few far-out values set its "
                        "range); quantized at 16 bits: %.1f dB", name, narrow[name], after[name])
        return PassResult(model, True)


def bulk_sqnr(model: Model, names: list[str], data: Dataset) -> dict[str, float]:
    """Bulk SQNR in dB (qcompiler.quant.signal) of each named activation at its calibrated
    parameters, over the first SAMPLES samples of `data`."""
    if not names:
        return {}
    runner = session(model, extra_outputs=names)
    energies = {name: [0.0, 0.0] for name in names}
    sample = data.head(min(SAMPLES, data.count))
    for feeds in sample.batches(min(observation_batch_size(model, names), SAMPLES)):
        for name, values in zip(names, runner.run(names, feeds)):
            tq = model.quant[name]
            signal, noise = bulk_energies(values, tq.params, tq.spec)
            energies[name][0] += signal
            energies[name][1] += noise
    return {name: sqnr_from(*energies[name]) for name in names}
