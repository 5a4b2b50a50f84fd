"""calibrate-ranges: run the float model on calibration data and set every quantizer's params.

Weights are observed directly (per channel). Activations: onnxruntime runs the float graph
with every annotated tensor exposed as an output, one batch at a time, and each tensor's
observer streams over the batches (a second pass for histogram observers). Tensors tied into
one group (Concat, pass-through ops) share the union of their ranges.
"""

from __future__ import annotations

import logging

import numpy as np

from qcompiler.data import Dataset, sample_bytes
from qcompiler.errors import CalibrationDataError, PassError
from qcompiler.executor import session
from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.progress import Progress
from qcompiler.quant.maths import params_from_range
from qcompiler.quant.annotation import weight_values
from qcompiler.quant.observers import Observer, make_observer, weight_range
from qcompiler.registry import register

log = logging.getLogger(__name__)

#: Bytes of intermediate tensors one batch may hold; the batch size follows from it.
BATCH_MEMORY = 256 * 2**20


@register("calibrate-ranges")
class CalibrateRanges(Pass):
    """Observe weights and activations (annotated by annotate-quant) and set their QuantParams."""

    def __init__(self, data: Dataset | None = None, batch_size: int | None = None, progress: bool = True) -> None:
        self.data, self.batch_size, self.progress = data, batch_size, progress

    def requires(self, model: Model) -> None:
        if any(tq.role == "activation" for tq in model.quant.values()) and self.data is None:
            raise PassError("calibrate-ranges needs calibration data: CalibrateRanges(data=...)")

    def call(self, model: Model) -> PassResult:
        before = model.fingerprint()
        for name, weight in weight_values(model).items():
            tq = model.quant[name]
            model.quant[name] = tq.with_params(params_from_range(*weight_range(weight, tq.spec), tq.spec))
        activations = [name for name, tq in model.quant.items() if tq.role == "activation"]
        if activations:
            ranges = self._observe(model, activations)
            group_ranges: dict[str, tuple[float, float]] = {}
            for name in activations:
                group = model.quant[name].group
                lo, hi = group_ranges.get(group, (np.inf, -np.inf))
                group_ranges[group] = (min(lo, ranges[name][0]), max(hi, ranges[name][1]))
            group_params = {}  # members share spec (same bits) and range, so one params object per group
            for name in activations:
                tq = model.quant[name]
                if tq.group not in group_params:
                    lo, hi = group_ranges[tq.group]
                    group_params[tq.group] = params_from_range(np.float32(lo), np.float32(hi), tq.spec, warn=False)
                model.quant[name] = tq.with_params(group_params[tq.group], observed=ranges[name])
            _warn_zero(group_ranges, activations)
        return PassResult(model, model.fingerprint() != before)

    def _observe(self, model: Model, names: list[str]) -> dict[str, tuple[float, float]]:
        observers = {n: make_observer(model.quant[n].spec.observer) for n in names}
        runner = session(model, extra_outputs=names)
        batch = self.batch_size or observation_batch_size(model, names)
        passes = 2 if any(o.two_pass for o in observers.values()) else 1
        for index in range(passes):
            self._one_pass(runner, observers, names, batch, index, passes)
        return {n: _checked_range(n, o, model.quant[n].spec) for n, o in observers.items()}

    def _one_pass(self, runner, observers: dict[str, Observer], names: list[str], batch: int, index: int, passes: int) -> None:
        steps = -(-self.data.count // batch)
        bar = Progress(f"calibrating ({'ranges' if index == 0 else 'histograms'}, pass {index + 1}/{passes})", steps,
                       self.progress)
        for feeds in self.data.batches(batch):
            for name, value in zip(names, runner.run(names, feeds)):
                observer = observers[name]
                if index == 0:
                    observer.observe(value)
                elif observer.two_pass:
                    observer.observe_again(value)
            bar.advance()
        bar.close()


def observation_batch_size(model: Model, names: list[str]) -> int:
    """As many samples as fit BATCH_MEMORY of observed tensors."""
    return int(np.clip(BATCH_MEMORY // max(sample_bytes(model, names), 1), 1, 256))


def _warn_zero(group_ranges: dict[str, tuple[float, float]], activations: list[str]) -> None:
    """One warning for all activations that are 0 on every calibration sample (one per tensor
    buried a 1500-layer model's summary under 750 lines)."""
    zero = [g for g, (lo, hi) in group_ranges.items() if lo >= 0.0 and hi <= 0.0]
    if zero:
        log.warning("%d of %d activation tensors are 0 on all the calibration data (e.g. %r): scale 1.0 represents "
                    "that exactly; if they should not be, check the data", len(zero), len(activations), zero[0])


def _checked_range(name: str, observer: Observer, spec) -> tuple[float, float]:
    lo, hi = observer.range(spec)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise CalibrationDataError(f"tensor {name!r}: the float model computes non-finite values [{lo}, {hi}] on "
                                   "the calibration data (overflow?); check the data's scale and preprocessing")
    return float(lo), float(hi)
