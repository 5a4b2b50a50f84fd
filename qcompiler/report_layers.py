"""The report's per-layer view: one row per weighted layer in graph order (op, weight and
activation bits, integer or float, SQNR, sensitivity, stored bytes, measured kernel time), an
HTML table that sorts and filters in the page (inline script, no network), and the plots that
stay readable at hundreds of layers (values along the network, the worst offenders labelled,
ranges on a log axis, the chosen bit widths and the Pareto front)."""

from __future__ import annotations

import dataclasses
import html
import math

import numpy as np

from qcompiler.evaluation import TensorError


@dataclasses.dataclass(frozen=True)
class LayerRow:
    index: int
    name: str
    op: str
    weight_bits: int | None
    input_bits: int | None
    runs: str                      # "integer" (input and weight quantized) or "float"
    weight_sqnr: float | None
    output_sqnr: float | None
    sensitivity: float | None      # block error at its bits (with --bits auto or analyze)
    bytes: int | None              # weights as the target's library stores them (with --bits auto)
    latency_ms: float | None       # its kernel at its bits, measured (with a latency budget)


def graph_order(model) -> dict[str, int]:
    """Tensor name -> the position of the first node that produces or reads it."""
    order: dict[str, int] = {}
    for position, node in enumerate(model.graph.nodes):
        for tensor in [*node.inputs, *node.outputs]:
            order.setdefault(tensor.name, position)
    return order


def layer_rows(annotated, tensors: list[TensorError], mixed=None) -> list[LayerRow]:
    """The weighted layers of the annotated model, in graph order."""
    from qcompiler.ops import QUANTIZED_LAYERS

    sqnr = {t.name: t.sqnr_db for t in tensors}
    bits = mixed.bits_of() if mixed is not None and mixed.assignment is not None else {}
    rows = []
    for node in annotated.graph.nodes:
        if node.op not in QUANTIZED_LAYERS or len(node.inputs) < 2 or annotated.const_value(node.inputs[1]) is None:
            continue
        w, x = annotated.quant.get(node.inputs[1].name), annotated.quant.get(node.inputs[0].name)
        out = _quantized_output(annotated, node)
        entry = mixed.table.layer(node.name) if mixed is not None and _has(mixed.table, node.name) else None
        chosen = bits.get(node.name, w.spec.bits if w else None)
        latency = mixed.latency.ms.get(node.name, {}).get(chosen) if mixed is not None and mixed.latency else None
        rows.append(LayerRow(len(rows), node.name, node.op, w.spec.bits if w else None, x.spec.bits if x else None,
                             "integer" if w and x else "float", sqnr.get(node.inputs[1].name),
                             sqnr.get(out) if out else None,
                             entry.block_error.get(chosen) if entry and chosen else None,
                             mixed.sizes[node.name].get(chosen) if mixed is not None and node.name in mixed.sizes
                             else None, latency))
    return rows


def _has(table, name: str) -> bool:
    return any(entry.layer == name for entry in table.layers)


def _quantized_output(model, node) -> str | None:
    """The quantized tensor after a layer: its output, or the Relu/Clip's that alone reads it."""
    out = node.outputs[0]
    if out.name in model.quant:
        return out.name
    readers = model.consumers(out)
    if len(readers) == 1 and readers[0].outputs and readers[0].outputs[0].name in model.quant:
        return readers[0].outputs[0].name
    return None


def _cell(value, digits: int = 3) -> str:
    if value is None:
        return "<td></td>"
    if isinstance(value, float):
        shown = "inf" if math.isinf(value) else f"{value:.{digits}f}" if abs(value) >= 0.01 or value == 0 \
            else f"{value:.2e}"
        return f"<td data-v='{value if math.isfinite(value) else 1e99}'>{shown}</td>"
    if isinstance(value, int):
        return f"<td data-v='{value}'>{value:,}</td>"
    return f"<td>{html.escape(str(value))}</td>"


COLUMNS = ("#", "layer", "op", "weight bits", "input bits", "runs in", "weight SQNR dB", "output SQNR dB",
           "sensitivity", "bytes", "kernel ms")


def sortable_table(columns, rows: list[list], digits: dict[int, int] | None = None) -> str:
    """A table SORT_SCRIPT sorts (click a header) and filters (the box above it)."""
    digits = digits or {}
    head = "".join(f"<th data-col='{i}' title='click to sort'>{html.escape(c)}</th>" for i, c in enumerate(columns))
    body = "".join("<tr>" + "".join(_cell(v, digits.get(k, 3)) for k, v in enumerate(row)) + "</tr>" for row in rows)
    return (f"<p><input id='layer-filter' placeholder='filter layers (name, op, bits, float)' size='40'> "
            f"<span id='layer-count'>{len(rows)} layers</span></p>"
            f"<table id='layers' class='sortable'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")


def table_html(rows: list[LayerRow]) -> str:
    """The report's per-layer table."""
    return sortable_table(COLUMNS, [[r.index, r.name, r.op, r.weight_bits, r.input_bits, r.runs, r.weight_sqnr,
                                     r.output_sqnr, r.sensitivity, r.bytes, r.latency_ms] for r in rows],
                          {6: 1, 7: 1, 8: 4, 10: 4})


#: Click a header to sort (numbers by their data-v), type to filter rows. The address can say
#: both: report.html#sort=sensitivity&desc&filter=conv. Sets data-ready on the body when done, and
#: records script errors in data-errors (the headless-browser test reads both).
SORT_SCRIPT = """<script>
window.addEventListener('error', function (e) {
  document.body.dataset.errors = (document.body.dataset.errors || '') + e.message + ';';
});
function sortTable(table, col, up) {
  var body = table.tBodies[0], th = table.tHead.rows[0].cells[col];
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { delete h.dataset.dir; });
  th.dataset.dir = up ? 'up' : 'down';
  var rows = Array.prototype.slice.call(body.rows);
  rows.sort(function (a, b) {
    var x = a.cells[col], y = b.cells[col];
    var nx = x.dataset.v !== undefined, ny = y.dataset.v !== undefined;
    if (nx !== ny) return nx ? -1 : 1;   // empty cells last, either way
    var vx = nx ? parseFloat(x.dataset.v) : x.textContent, vy = ny ? parseFloat(y.dataset.v) : y.textContent;
    var c = vx < vy ? -1 : vx > vy ? 1 : 0;
    return up ? c : -c;
  });
  rows.forEach(function (r) { body.appendChild(r); });
}
function filterLayers(text) {
  var words = text.toLowerCase().split(/\\s+/).filter(Boolean), shown = 0;
  Array.prototype.forEach.call(document.getElementById('layers').tBodies[0].rows, function (r) {
    var row = r.textContent.toLowerCase();
    var keep = words.every(function (w) { return row.indexOf(w) >= 0; });
    r.style.display = keep ? '' : 'none';
    shown += keep ? 1 : 0;
  });
  document.getElementById('layer-count').textContent = shown + ' layers';
}
document.addEventListener('DOMContentLoaded', function () {
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener('click', function () { sortTable(table, col, th.dataset.dir !== 'up'); });
    });
  });
  var filter = document.getElementById('layer-filter'), layers = document.getElementById('layers');
  if (filter) filter.addEventListener('input', function () { filterLayers(filter.value); });
  var asked = {};
  location.hash.slice(1).split('&').forEach(function (part) {
    var kv = part.split('=');
    if (kv[0]) asked[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || '');
  });
  if (layers && asked.sort) {
    var names = Array.prototype.map.call(layers.tHead.rows[0].cells, function (h) { return h.textContent.trim(); });
    var col = names.indexOf(asked.sort);
    if (col >= 0) sortTable(layers, col, !('desc' in asked));
  }
  if (filter && asked.filter) { filter.value = asked.filter; filterLayers(asked.filter); }
  document.body.dataset.ready = '1';
});
</script>"""


# ---- plots ------------------------------------------------------------------------------------

#: Offenders labelled in the "lowest SQNR" plot.
TOP_OFFENDERS = 20


def sqnr_along(plt, tensors: list[TensorError]):
    """SQNR of weights and activations against their position in the network (graph order)."""
    if not tensors:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.6))
    for role, color in (("weight", "tab:blue"), ("activation", "tab:orange")):
        points = [(i, min(t.sqnr_db, 99.0)) for i, t in enumerate(tensors) if t.role == role]
        if points:
            ax.plot(*zip(*points), marker=".", ms=4, lw=0.8, color=color, label=role + "s")
    ax.set_xlabel("tensor, in graph order")
    ax.set_ylabel("SQNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def worst_offenders(plt, tensors: list[TensorError]):
    """The lowest-SQNR tensors, labelled, worst first: readable whatever the network's size."""
    worst = sorted((t for t in tensors if math.isfinite(t.sqnr_db)), key=lambda t: t.sqnr_db)[:TOP_OFFENDERS]
    if not worst:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.26 * len(worst) + 0.8))
    ax.barh(range(len(worst)), [t.sqnr_db for t in worst],
            color=["tab:blue" if t.role == "weight" else "tab:orange" for t in worst])
    ax.set_yticks(range(len(worst)), [_short(t.name) for t in worst], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("SQNR (dB); blue: weights, orange: activations")
    return fig


def ranges_log(plt, tensors: list[TensorError]):
    """Each tensor's largest magnitude (max |lo|, |hi|) along the network, on a log axis: one
    axis for ranges four decades apart."""
    points = [(i, max(abs(t.lo), abs(t.hi)), t.role) for i, t in enumerate(tensors) if max(abs(t.lo), abs(t.hi)) > 0]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(11, 3.2))
    for role, color in (("weight", "tab:blue"), ("activation", "tab:orange")):
        chosen = [(i, v) for i, v, r in points if r == role]
        if chosen:
            ax.scatter(*zip(*chosen), s=8, color=color, label=role + "s")
    ax.set_yscale("log")
    ax.set_xlabel("tensor, in graph order")
    ax.set_ylabel("max |value| of the range")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def bits_and_front(plt, mixed):
    """The chosen weight bits along the network, and the front the search saw with the chosen
    point: summed sensitivity against size, and against predicted latency where the search had
    a latency budget (one panel per budgeted cost; size alone when there was none)."""
    a, problem = mixed.assignment, mixed.problem
    bits = mixed.bits_of()
    names = [n for n in mixed.sizes if n in bits]
    costs = [c for c in (("size", problem.max_size), ("latency", problem.max_latency)) if c[1] is not None]
    fig, axes = plt.subplots(1, 1 + len(costs), figsize=(11 + 4 * (len(costs) - 1), 3.4),
                             gridspec_kw={"width_ratios": [3] + [2] * len(costs)})
    left = axes[0]
    left.bar(range(len(names)), [bits[n] for n in names],
             color=["tab:gray" if n in mixed.pinned else "tab:blue" for n in names])
    left.set_yticks([2, 4, 8])
    left.set_xlabel("weighted layer, in graph order (gray: pinned)")
    left.set_ylabel("weight bits")
    for ax, (cost, budget) in zip(axes[1:], costs):
        _front_panel(ax, mixed, cost, budget)
    fig.tight_layout()
    return fig


def _front_panel(ax, mixed, cost: str, budget: float) -> None:
    """Summed sensitivity against one cost (size in KiB or latency in ms): the seen points no
    other beats on both, the chosen point, the baselines and the budget."""
    a = mixed.assignment
    scale, unit = (1 / 1024, "weights (KiB)") if cost == "size" else (1.0, "predicted latency (ms)")
    column = 0 if cost == "size" else 1

    def at(point) -> float:
        return point[column] * scale

    front, lowest = [], np.inf
    for point in sorted(a.front, key=lambda p: (p[column], p[2])):
        if point[2] < lowest:   # sorted by this cost: a point is on its 2-D front if it beats all cheaper ones
            front.append(point)
            lowest = point[2]
    if front:
        ax.plot([at(p) for p in front], [p[2] for p in front], ".-", color="tab:green", label="front seen")
    ax.plot([at((a.size, a.latency))], [a.objective], "r*", ms=12, label="chosen")
    for name, other in mixed.baselines.items():
        ax.plot([at((other.size, other.latency))], [other.objective], "x", ms=8, label=name)
    ax.axvline(budget * scale, color="k", lw=0.6, ls="--", label="budget")
    ax.set_xlabel(unit)
    ax.set_ylabel("summed sensitivity")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.legend(fontsize=7)


def _short(name: str, width: int = 48) -> str:
    return name if len(name) <= width else "…" + name[-(width - 1):]
