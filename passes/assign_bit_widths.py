"""assign-bit-widths: weight bits per layer by a search under a size and/or latency budget
(docs/mixed_precision.md).

Runs on an annotated model (after annotate-quant, before calibrate-ranges, so that calibration
and reconstruction use the chosen specs): the search (BRECQ's genetic algorithm by default;
greedy or exact on request) picks one of each searched layer's bit choices from a
`qcompiler.quant.bitsearch.BitProblem` (sensitivities and costs measured beforehand), then every
searched layer's weight spec takes its bits. The answer (an `Assignment`, with its Pareto front
and per-generation history) is left in model.analysis["assign-bit-widths"].
"""

from __future__ import annotations

import dataclasses
import logging

from qcompiler.errors import UsageError
from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassResult
from qcompiler.quant.bitsearch import BitProblem, exact_search, genetic_search, greedy_search
from qcompiler.quant.presets import QuantConfig
from qcompiler.registry import register

log = logging.getLogger(__name__)

SEARCHES = {"genetic": genetic_search, "greedy": lambda p, seed: greedy_search(p),
            "exact": lambda p, seed: exact_search(p)}


@register("assign-bit-widths")
class AssignBitWidths(Pass):
    """Pick weight bits per layer under the problem's budget and set the layers' weight specs."""

    def __init__(self, problem: BitProblem | None = None, config: QuantConfig | None = None,
                 method: str = "genetic", seed: int = 0) -> None:
        if method not in SEARCHES:
            raise UsageError(f"bit-width search must be one of {sorted(SEARCHES)}, not {method!r}")
        self.problem, self.config, self.method, self.seed = problem, config or QuantConfig(), method, seed

    def call(self, model: Model) -> PassResult:
        annotated = any(tq.role == "weight" for tq in model.quant.values())
        if self.problem is None and not annotated:
            return PassResult(model, False)   # nothing to assign (the model is not annotated)
        if self.problem is None:
            raise UsageError("Pass developer: assign-bit-widths needs a BitProblem (qcompiler.mixed_precision "
                             "builds one from measured sensitivities and costs)")
        weights = {tq.layer: name for name, tq in model.quant.items() if tq.role == "weight"}
        missing = [layer for layer in self.problem.layers if layer not in weights]
        if missing:
            raise UsageError(f"assign-bit-widths: layers {missing[:3]} have no quantized weight in this model "
                             "(run annotate-quant first, with the config the problem was built for)")
        answer = SEARCHES[self.method](self.problem, self.seed)
        modified = False
        for layer, bits in answer.by_layer(self.problem).items():
            tq = model.quant[weights[layer]]
            if tq.spec.bits != bits:
                spec = self.config.layer_spec_at(layer, bits, tq.spec.axis)
                model.quant[weights[layer]] = dataclasses.replace(tq, spec=spec, params=None)
                modified = True
        model.analysis["assign-bit-widths"] = answer
        log.info("assign-bit-widths (%s): %s", self.method, answer.bits)
        return PassResult(model, modified)
