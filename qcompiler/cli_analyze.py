"""`qcompiler analyze`: per-layer sensitivity to weight bit width (qcompiler.sim.sensitivity),
printed as a table in graph order and written as sensitivity.json and analysis.html."""

from __future__ import annotations

import argparse
import html
import sys
from pathlib import Path

from qcompiler.errors import UsageError


def add_command(sub, positive_int) -> None:
    p = sub.add_parser("analyze", help="how much each layer's weight quantization at each bit width costs: the "
                       "Fisher-weighted error of its block and the network's KL, agreement and accuracy")
    p.add_argument("model", type=Path)
    p.add_argument("--calib", required=True, help="calibration data as for `quantize` (the block errors)")
    p.add_argument("--eval", help="held-out data (with 'labels' for accuracy) for the network-level effect "
                   "(default: the calibration samples)")
    p.add_argument("--calib-count", type=positive_int, help="use at most this many calibration samples")
    p.add_argument("--samples", type=positive_int, default=128, help="samples the block errors use (default 128)")
    p.add_argument("--preset", default="w4a8", help="the weight scheme whose bit widths are tried (default w4a8)")
    p.add_argument("--bit-choices", default="2,4,8", help="widths to try (default: %(default)s)")
    p.add_argument("--no-fisher", action="store_true", help="plain squared block output error, not Fisher-weighted")
    p.add_argument("--no-network", action="store_true", help="skip the network-level KL / agreement / accuracy")
    p.add_argument("--input-shape", action="append", default=[], metavar="NAME=D,D,...", help="as for `quantize`")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("-o", "--output-dir", type=Path, help="also write sensitivity.json and analysis.html here")


def cmd_analyze(args: argparse.Namespace) -> int:
    from qcompiler import driver, files
    from qcompiler.cli_options import input_shape
    from qcompiler.data import load_data
    from qcompiler.mixed_precision import parse_choices, searched_layers
    from qcompiler.passes.partition_blocks import partition
    from qcompiler.quant.presets import load_config
    from qcompiler.sim.sensitivity import SensitivityConfig, analyze

    config = load_config(None, args.preset, None, [])
    model = driver._as_model(args.model)
    shapes = dict(input_shape(s) for s in args.input_shape) or None
    data = load_data(args.calib, model, limit=args.calib_count)
    held = load_data(args.eval, model, what="evaluation") if args.eval else None
    float_model = driver.float_model(model, driver.shapes_to_fix(model, shapes, data.arrays))
    layers, _, _ = searched_layers(float_model, config)
    if not layers:
        raise UsageError(f"{args.model}: no layer with a constant weight to analyze")
    settings = SensitivityConfig(parse_choices(args.bit_choices), not args.no_fisher, args.samples,
                                 network=not args.no_network)
    print(f"analyzing {len(layers)} layers of {args.model} at {args.bit_choices} bits ...", file=sys.stderr)
    table = analyze(float_model, layers, partition(float_model), data, config.layer_spec_at, settings,
                    eval_data=held, progress=not args.no_progress)
    print(text_table(table))
    if args.output_dir is not None:
        out = files.prepare_output_dir(args.output_dir)
        files.write_text_atomic(out / "sensitivity.json", table.to_json())
        files.write_text_atomic(out / "analysis.html", html_page(table, str(args.model)))
        print(f"wrote {out / 'sensitivity.json'} and {out / 'analysis.html'}")
    return 0


def _columns(table) -> list[str]:
    unit = "Fisher err" if table.fisher else "block MSE"
    columns = [f"{unit} @{b}" for b in table.choices]
    if any(e.network_kl for e in table.layers):
        columns += [f"KL @{b}" for b in table.choices] + [f"agree @{b}" for b in table.choices]
    if any(e.accuracy for e in table.layers):
        columns += [f"top-1 @{b}" for b in table.choices]
    return ["#", "layer", "op", "params", *columns]


def _values(table, index: int, entry) -> list:
    values = [index, entry.layer, entry.op, entry.parameters] + [entry.block_error[b] for b in table.choices]
    for field in ("network_kl", "agreement", "accuracy"):
        found = getattr(entry, field)
        if found:
            values += [found[b] for b in table.choices]
    return values


def text_table(table) -> str:
    """Graph order, then the five most sensitive layers at the fewest bits."""
    columns = _columns(table)
    rows = [[_fmt(v) for v in _values(table, i, e)] for i, e in enumerate(table.layers)]
    widths = [max(len(c), *(len(r[k]) for r in rows)) for k, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    low = table.choices[0]
    worst = sorted(table.layers, key=lambda e: -e.block_error[low])[:5]
    lines.append(f"most sensitive at {low} bits: " + ", ".join(f"{e.layer} ({e.block_error[low]:.3g})" for e in worst))
    if table.pairs:
        pair, widths, extra = max(((p, w, v) for p, terms in table.pairs.items() for w, v in terms.items()),
                                  key=lambda t: abs(t[2]))
        a, b = pair.split("|")
        lines.append(f"pair terms (two layers of one block quantized together, minus each alone): {len(table.pairs)} "
                     f"pairs; the largest: {a} + {b} at {widths.replace(',', ' and ')} bits ({extra:+.3g})")
    source = "read from the cache" if table.cached else f"measured in {table.seconds:.0f} s"
    lines.append(f"{table.samples} calibration samples, {table.eval_samples} for the network effect; {source}"
                 + (f"; float top-1 {table.float_accuracy:.4f}" if table.float_accuracy is not None else ""))
    return "\n".join(lines)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def html_page(table, model: str) -> str:
    from qcompiler.report_layers import SORT_SCRIPT, sortable_table

    rows = [_values(table, i, e) for i, e in enumerate(table.layers)]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>qcompiler analyze: {html.escape(model)}"
            "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;font-size:13px}th{background:#f0f0f0;cursor:pointer}</style>"
            f"</head><body><h1>Sensitivity of {html.escape(model)}</h1><pre>{html.escape(text_table(table))}</pre>"
            f"{sortable_table(_columns(table), rows)}{SORT_SCRIPT}</body></html>")
