"""The quantization report: a summary table for the terminal, and report.html with plots.

The HTML is one self-contained file (plots inlined as PNG) so it can be mailed or archived.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import io
import math

import numpy as np

from qcompiler import __version__
from qcompiler.evaluation import Evaluation, TensorError
from qcompiler.summary import format_bytes


@dataclasses.dataclass(frozen=True)
class ReportData:
    model_path: str
    preset: str
    observer: str
    calibration: str
    calibration_samples: int
    evaluation: Evaluation | None
    evaluation_source: str
    tensors: list[TensorError]
    float_bytes: int
    quant_bytes: int
    seconds: float
    weight_values: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    reconstruction: list = dataclasses.field(default_factory=list)  # BlockReports (qcompiler.blocks)
    reconstruction_setting: str = ""
    bias_correction: str = ""  # what correct-bias did, for the summary; "" when it did not run
    untied: dict = dataclasses.field(default_factory=dict)  # Concat -> why its inputs keep their own scales
    widened: dict = dataclasses.field(default_factory=dict)  # activation -> bulk SQNR dB at 8 and at 16 bits
    training: object = None  # a qcompiler.training.TrainReport, when trained (QIL/QAT)
    mixed: object = None  # a qcompiler.mixed_precision.MixedPrecision, with --bits auto
    layers: list = dataclasses.field(default_factory=list)  # report_layers.LayerRow, in graph order


def summary_table(r: ReportData) -> str:
    """The table `qcompiler quantize` prints."""
    rows = [("model", r.model_path), ("preset", r.preset), ("activation observer", r.observer),
            ("calibration", f"{r.calibration_samples} samples from {r.calibration}"),
            ("constants", f"{format_bytes(r.float_bytes)} float -> {format_bytes(r.quant_bytes)} quantized "
                        f"({r.float_bytes / max(r.quant_bytes, 1):.2f}x smaller)")]
    e = r.evaluation
    if e is not None:
        rows.append(("evaluated on", f"{e.samples} samples from {r.evaluation_source}"))
        if e.float_top1 is not None:
            rows.append(("top-1 float / quantized", f"{e.float_top1:.4f} / {e.quant_top1:.4f}  (drop {100 * e.drop:+.2f} points)"))
        rows.append(("top-1 agreement", f"{e.agreement:.4f}"))
        rows.append(("KL(float || quantized)", f"{e.kl:.5f} nats"))
        rows.append(("output SQNR", f"{e.sqnr_db:.1f} dB"))
    for concat, reason in r.untied.items():
        rows.append(("untied concat", f"{concat}: {reason}; inputs keep their own scales, the concat runs in float"))
    for tensor, (eight, sixteen) in r.widened.items():
        rows.append(("16-bit activation", f"{tensor}: its typical values keep {eight:.1f} dB at 8 bits (a few far-out "
                     f"values set the range), {sixteen:.1f} dB at 16"))
    if r.reconstruction:
        before = sum(b.loss_nearest for b in r.reconstruction)
        after = sum(b.loss_learned for b in r.reconstruction)
        rows.append(("reconstruction", f"{r.reconstruction_setting}: {len(r.reconstruction)} blocks, block output "
                     f"error {before:.4g} -> {after:.4g} (sum, nearest rounding -> learned), "
                     f"{sum(b.seconds for b in r.reconstruction):.1f} s"))
        guarded = [b for b in r.reconstruction if b.held_nearest is not None]
        if guarded:
            dropped = sum(len(b.dropped) for b in guarded)
            rows.append(("held-out guard", f"network output error on the held-out samples "
                         f"{guarded[0].held_nearest:.4g} -> {guarded[-1].held_learned:.4g} (before the first block, "
                         f"after the last); "
                         f"{dropped} learned phase{'s' * (dropped != 1)} dropped for raising it "
                         f"(in {sum(bool(b.dropped) for b in guarded)} of {len(guarded)} blocks)"))
    if r.bias_correction:  # after reconstruction, as the passes run
        rows.append(("bias correction", r.bias_correction))
    if r.mixed is not None and r.mixed.assignment is not None:
        rows.append(("bit widths", r.mixed.summary()))
    if r.training is not None:
        from qcompiler.report_training import interval_row, training_row

        rows += [row for row in (training_row(r.training), interval_row(r.training)) if row]
    worst = sorted((t for t in r.tensors if math.isfinite(t.sqnr_db)), key=lambda t: t.sqnr_db)[:3]
    if worst:
        rows.append(("lowest SQNR tensors", "; ".join(f"{t.name} {t.sqnr_db:.1f} dB" for t in worst)))
    rows.append(("time", f"{r.seconds:.1f} s"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _blocks_html(reports: list) -> str:
    """The block reconstruction table (BlockReports), with the held-out columns when guarded."""
    if not reports:
        return ""
    guarded = reports[0].held_nearest is not None
    rows = "".join(
        f"<tr><td>{html.escape(b.block.name)}</td><td>{html.escape(', '.join(b.block.layers))}</td>"
        f"<td>{b.loss_nearest:.4g}</td><td>{b.loss_learned:.4g}</td>"
        + (f"<td>{b.held_nearest:.4g}</td><td>{b.held_learned:.4g}</td><td>{', '.join(b.dropped)}</td>"
           if guarded else "") + f"<td>{b.seconds:.1f}</td></tr>" for b in reports)
    held = ("<th>held-out: before</th><th>held-out: after</th><th>dropped phases</th>" if guarded else "")
    return ("<h2>Block reconstruction</h2><p>Block output error (squared error summed over channels, "
            "mean over samples and positions; Fisher-weighted when chosen) on the cached calibration "
            "samples, with nearest rounding and calibrated ranges, then with the learned rounding and "
            "step sizes" + ("; with the held-out guard, the network's output error on the held-out samples "
                            "(squared error against the float network, per sample) before and after the block, and "
                            "the phases whose result was dropped because they raised it" if guarded else "")
            + f".</p><table><tr><th>block</th><th>layers</th><th>nearest</th><th>learned</th>{held}"
            f"<th>seconds</th></tr>{rows}</table>")


def write_html(r: ReportData) -> str:
    """The report as an HTML string: summary, the per-layer table (sorts and filters in the page),
    plots that stay readable at hundreds of layers, the block and training tables, every tensor."""
    from qcompiler import report_layers as rl
    from qcompiler.report_training import training_html

    plt = _pyplot() if r.tensors else None
    plots = [("SQNR along the network", _png(rl.sqnr_along, plt, r.tensors)),
             (f"The {rl.TOP_OFFENDERS} lowest-SQNR tensors", _png(rl.worst_offenders, plt, r.tensors)),
             ("Quantization ranges along the network (log axis)", _png(rl.ranges_log, plt, r.tensors)),
             ("Weight histograms of the six lowest-SQNR layers",
              _weight_histograms([t for t in r.tensors if t.role == "weight"], r.weight_values))]
    if r.mixed is not None and r.mixed.assignment is not None:
        plots.insert(0, ("Chosen bit widths and the Pareto front", _png(rl.bits_and_front, _pyplot(), r.mixed)))
    table = "".join(
        f"<tr><td>{html.escape(t.name)}</td><td>{t.role}</td><td>{html.escape(t.spec)}</td>"
        f"<td>{t.sqnr_db:.1f}</td><td>{t.lo:.4g}</td><td>{t.hi:.4g}</td></tr>" for t in r.tensors)
    blocks = _blocks_html(r.reconstruction)
    blocks += training_html(r.training)
    figures = "".join(f"<h2>{title}</h2><img alt='{title}' src='data:image/png;base64,{png}'>"
                      for title, png in plots if png)
    layers = rl.table_html(r.layers) if r.layers else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>qcompiler report: {html.escape(r.model_path)}</title>
<style>body{{font-family:sans-serif;max-width:1150px;margin:2em auto;padding:0 1em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:2px 8px;font-size:13px}}th{{background:#f0f0f0;cursor:pointer}}
th[data-dir=up]::after{{content:" \\25B2"}}th[data-dir=down]::after{{content:" \\25BC"}}
pre{{background:#f6f6f6;padding:1em;white-space:pre-wrap;overflow-wrap:anywhere}}img{{max-width:100%}}
#layers td:nth-child(2){{max-width:420px;overflow-wrap:anywhere}}</style>
</head><body>
<h1>Quantization report</h1>
<pre>{html.escape(summary_table(r))}</pre>
<p>Float and quantized models both run in onnxruntime. SQNR = 10 log10(sum x^2 / sum (x - x_q)^2): weights
against their fake-quantized values; activations: the float model's tensor against the quantized
model's dequantized tensor on the first calibration samples, so an activation's SQNR includes the error
of every quantizer before it (it falls along the network; a sudden drop points at the culprit).
Everything is in graph order. Made by qcompiler {__version__}.</p>
<h2>Layers</h2>
<p>One row per weighted layer. <i>runs in</i>: integer where its input and weight are quantized.
<i>sensitivity</i>: the layer's own Fisher-weighted block output error at its bits (an estimate of the
loss it adds, nats; with --bits auto). <i>bytes</i>: its weights as the target's library stores them.
<i>kernel ms</i>: its kernel at its bits, measured on the target (with --max-latency).
Click a column to sort; type to filter.</p>
{layers}
{blocks}
{figures}
<h2>Every quantized tensor</h2>
<table><tr><th>tensor</th><th>role</th><th>quantizer</th><th>SQNR dB</th><th>range lo</th><th>range hi</th></tr>
{table}</table>
{rl.SORT_SCRIPT}
</body></html>
"""


def _png(plot, plt, *args) -> str:
    fig = plot(plt, *args) if plt is not None else None
    return _figure_png(fig) if fig is not None else ""


def _figure_png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _weight_histograms(weights: list[TensorError], values: dict[str, np.ndarray]) -> str:
    worst = sorted((t for t in weights if t.name in values), key=lambda t: t.sqnr_db)[:6]
    if not worst:
        return ""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(11, 5))
    for ax, t in zip(axes.flat, worst):
        ax.hist(values[t.name].ravel(), bins=101, log=True, color="tab:blue")
        ax.set_title(f"{t.name[-30:]}\n{t.spec}, {t.sqnr_db:.1f} dB", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(worst):]:
        ax.axis("off")
    fig.tight_layout()
    return _figure_png(fig)
