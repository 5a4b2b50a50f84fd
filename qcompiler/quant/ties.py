"""Tied groups that would destroy a signal: a Concat whose inputs have very different ranges.

A Concat's inputs and output share one scale (annotate-quant ties them) so that the integer
concat is a copy. When one input spans a small part of the others' range (a detector's scores
concatenated with box offsets in pixels) its values land on a few grid steps of the shared
scale and its signal is gone. Measured on calibration data: an input whose observed range is
less than 1/MIN_SHARE_INVERSE of its group's range keeps fewer than log2(256 / 16) = 4 of the 8
bits. The remedy is to untie that Concat: each input keeps a scale of its own, and the Concat
runs in float between their dequantized values (its output stays float unless a later layer
quantizes it for itself). Used by the driver after calibration; the summary lists what it did.
"""

from __future__ import annotations

from qcompiler.ir import Model

#: An input using less than 1/16 of its group's range (fewer than 16 of 256 levels at 8 bits).
MIN_SHARE_INVERSE = 16


def narrow_concat_inputs(model: Model) -> dict[str, str]:
    """Concat name -> why it should be untied, for each Concat with an input whose observed range
    is below 1/MIN_SHARE_INVERSE of the range its tie group was calibrated to."""
    found = {}
    for node in model.graph.nodes:
        if node.op != "Concat":
            continue
        output = model.quant.get(node.outputs[0].name)
        if output is None or output.params is None or output.observed is None:
            continue
        group_span = _span(output.observed)
        for tensor in node.inputs:
            member = model.quant.get(tensor.name)
            if member is None or member.observed is None or member.group != output.group:
                continue
            ratio = group_span / max(_span(member.observed), 1e-30)
            if ratio > MIN_SHARE_INVERSE:
                found[node.name] = (f"input {tensor.name} spans 1/{ratio:.0f} of the range it shares "
                                    f"[{output.observed[0]:.3g}, {output.observed[1]:.3g}]")
                break
    return found


def _span(observed: tuple[float, float]) -> float:
    return float(observed[1]) - float(observed[0])
