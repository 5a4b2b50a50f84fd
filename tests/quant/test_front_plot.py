"""The report's mixed-precision figure: one front panel per budgeted cost, each a true 2-D front
(summed sensitivity against that cost), with the chosen point where the search put it."""

from __future__ import annotations

import dataclasses

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qcompiler.mixed_precision import BitBudget, MixedPrecision  # noqa: E402
from qcompiler.quant.bitsearch import BitProblem, genetic_search  # noqa: E402
from qcompiler.report_layers import bits_and_front  # noqa: E402


def mixed_for(problem: BitProblem) -> MixedPrecision:
    found = genetic_search(problem, seed=0)
    sizes = {name: dict(zip(c, s)) for name, c, s in zip(problem.layers, problem.choices, problem.size)}
    budget = BitBudget(max_size=problem.max_size, max_latency=problem.max_latency)
    return MixedPrecision(budget, problem, None, sizes, assignment=found)


def problem(max_size, max_latency) -> BitProblem:
    rng = np.random.default_rng(0)
    layers = 6
    sensitivity = tuple((float(w * 16), float(w * 4), 0.0) for w in rng.lognormal(0, 1, layers))
    size = tuple((n // 4, n // 2, n) for n in rng.integers(100, 1000, layers))
    latency = tuple((float(t), float(t) * 0.8, float(t) * 0.9) for t in rng.uniform(0.01, 0.1, layers))
    return BitProblem(tuple(f"l{i}" for i in range(layers)), ((2, 4, 8),) * layers, sensitivity, size,
                      max_size, latency, max_latency)


def plotted(fig) -> list[dict]:
    """Per front panel: its x label, the front line's points and the chosen star."""
    panels = []
    for ax in fig.axes[1:]:
        lines = {line.get_label(): line for line in ax.get_lines()}
        front = lines["front seen"]
        panels.append({"xlabel": ax.get_xlabel(), "front": list(zip(front.get_xdata(), front.get_ydata())),
                       "chosen": (lines["chosen"].get_xdata()[0], lines["chosen"].get_ydata()[0])})
    return panels


def test_one_front_panel_per_budget_each_a_2d_front():
    sizes = problem(2000, None)
    both = dataclasses.replace(sizes, max_size=sum(s[1] for s in sizes.size),
                               max_latency=0.85 * sum(max(t) for t in sizes.latency))
    for p, labels in ((sizes, ["weights (KiB)"]), (both, ["weights (KiB)", "predicted latency (ms)"])):
        mixed = mixed_for(p)
        fig = bits_and_front(plt, mixed)
        panels = plotted(fig)
        plt.close(fig)
        assert [panel["xlabel"] for panel in panels] == labels
        for panel, cost in zip(panels, (mixed.assignment.size / 1024, mixed.assignment.latency)):
            assert panel["chosen"] == (cost, mixed.assignment.objective)
            xs, ys = zip(*panel["front"])
            assert list(xs) == sorted(xs) and all(b < a for a, b in zip(ys, ys[1:])), \
                "cheaper to dearer, each point better than every cheaper one"
