"""The report's part on training (QIL, QAT): a summary row, the learned intervals and pruning
ratio per layer (QIL's figure), and the loss curve with the held-out results."""

from __future__ import annotations

import html

from qcompiler.training import MEASURED_SAMPLES, TrainReport


def training_row(t: TrainReport) -> tuple[str, str]:
    """The summary table's row: setting, samples, loss first -> last, the last held-out result, time."""
    held = f", held-out {t.metric} {100 * t.held_out[-1][1]:.2f}%" if t.held_out else ""
    return ("training", f"{t.setting}: {t.samples} samples, {len(t.losses)} steps, task loss {t.loss_before:.4g} -> "
                        f"{t.loss_after:.4g} (before -> after, on {min(t.samples, 1024)} training samples)"
                        f"{held}, {t.seconds:.1f} s")


def interval_row(t: TrainReport) -> tuple[str, str] | None:
    """The summary's row on QIL's intervals: how much each layer prunes and clips (None for QAT)."""
    if not t.weights:
        return None
    pruned = sorted(t.weights, key=lambda w: w.pruned)
    shifted = sum(a.low > 0 for a in t.activations)
    acts = sorted(t.activations, key=lambda a: a.pruned)
    shares = (f", {100 * acts[0].pruned:.1f}..{100 * acts[-1].pruned:.1f}% of their values beyond the zeros "
              f"(most: {acts[-1].name}), clip up to {100 * max(a.clipped for a in acts):.1f}%") if acts else ""
    return ("QIL intervals", f"{len(t.weights)} weights prune {100 * pruned[0].pruned:.1f}..{100 * pruned[-1].pruned:.1f}% "
                             f"(most: {pruned[-1].name}), clip up to {100 * max(w.clipped for w in t.weights):.1f}%; "
                             f"{shifted} of {len(t.activations)} activations prune below a learned threshold{shares}; "
                             "per layer in report.html")


def training_html(t: TrainReport | None) -> str:
    """The report's training section (empty without training)."""
    if t is None:
        return ""
    from qcompiler.report import _figure_png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3))
    ax.plot(t.losses, lw=0.6, color="tab:blue")
    ax.set_xlabel("step")
    ax.set_ylabel("task loss")
    curve = _figure_png(fig)
    held = "".join(f"<tr><td>{html.escape(label)}</td><td>{100 * value:.2f}%</td></tr>" for label, value in t.held_out)
    held = f"<table><tr><th>after</th><th>held-out {t.metric}</th></tr>{held}</table>" if held else \
        "<p>No held-out data was given (--eval), so no held-out result per epoch.</p>"
    return (f"<h2>Training</h2><p>{html.escape(t.setting)}; {t.samples} samples, {t.seconds:.1f} s.</p>{held}"
            f"<img alt='loss curve' src='data:image/png;base64,{curve}'>{_interval_section(t)}")


def _interval_section(t: TrainReport) -> str:
    if not t.weights:
        return ""
    from qcompiler.report import _figure_png, _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(11, 3))
    ax.bar(range(len(t.weights)), [100 * w.pruned for w in t.weights], color="tab:red")
    ax.set_xlabel("quantized weight, in graph order")
    ax.set_ylabel("pruned (%): |w| < c - d")
    pruned = _figure_png(fig)
    rows = "".join(
        f"<tr><td>{html.escape(w.name)}</td><td>{w.bits}</td><td>{w.centre:.4g}</td><td>{w.distance:.4g}</td>"
        f"<td>{w.gamma:.3f}</td><td>{100 * w.pruned:.1f}%</td><td>{100 * w.clipped:.1f}%</td></tr>" for w in t.weights)
    acts = "".join(f"<tr><td>{html.escape(a.name)}</td><td>{a.bits}</td><td>{a.low:.4g}</td><td>{a.high:.4g}</td>"
                   f"<td>{100 * a.zeros:.1f}%</td><td>{100 * a.pruned:.1f}%</td><td>{100 * a.clipped:.1f}%</td></tr>"
                   for a in t.activations)
    figure = ""
    if t.activations:
        fig, ax = plt.subplots(figsize=(11, 3))
        where = range(len(t.activations))
        ax.bar(where, [100 * a.zeros for a in t.activations], color="tab:gray", label="<= 0 already (ReLU)")
        ax.bar(where, [100 * a.pruned for a in t.activations], bottom=[100 * a.zeros for a in t.activations],
               color="tab:red", label="pruned: 0 < y <= c - d")
        ax.set_xticks(list(where), [a.name for a in t.activations], rotation=90, fontsize=6)
        ax.set_xlabel("QIL activation, in graph order")
        ax.set_ylabel("mapped to 0 (%)")
        ax.legend(fontsize=7)
        figure = f"<img alt='activation pruning ratio' src='data:image/png;base64,{_figure_png(fig)}'>"
    return ("<h3>Learned weight intervals</h3><p>Mean over output channels of the centre c and distance d; "
            "weights below c - d are pruned to 0, above c + d clipped.</p>"
            f"<img alt='pruning ratio' src='data:image/png;base64,{pruned}'>"
            "<table><tr><th>weight</th><th>bits</th><th>c</th><th>d</th><th>gamma</th><th>pruned</th>"
            f"<th>clipped</th></tr>{rows}</table><h3>Learned activation intervals</h3><p>Values below c - d "
            "become 0 (the shift is folded into the producing layer's bias), above c + d are clipped. The shares "
            f"are of the float values y each quantizer sees, on the first {MEASURED_SAMPLES} training samples with "
            "the trained network: zeros (y <= 0 already, a ReLU's), pruned by the interval (0 < y <= c - d) "
            f"and clipped (y > c + d).</p>{figure}<table><tr><th>activation</th><th>bits</th><th>c - d</th>"
            f"<th>c + d</th><th>zeros</th><th>pruned</th><th>clipped</th></tr>{acts}</table>")
