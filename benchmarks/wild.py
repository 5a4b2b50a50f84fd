"""Models from the wild: each corpus model (qcompiler.models.recipes.corpus: exporter-style graphs
of the families users bring) through quantize W8A8 and compile for this host, measured.

    python benchmarks/wild.py [--runs 50] [--only NAME]    # writes benchmarks/results/wild.md

Per model: ops in the exported graph, the share of multiply-accumulates in integer layers (Conv,
ConvTranspose, Gemm, MatMul whose inputs are both dequantized 8/4/2-bit tensors), the ops TVM
still runs in float, compile time, the library against its QDQ model as written in onnxruntime
(largest difference in LSBs of the output scale, share of exact elements, top-1 agreement over
the last axis), and batch-1 one-thread latency against onnxruntime FP32 and onnxruntime's own
int8 kernels on the same QDQ model (runners taking turns, as benchmarks/latency.py does).
The weights are random (the corpus tests compilers, not accuracy) and the inputs standard normal.
"""

from __future__ import annotations

import os

os.environ.setdefault("TVM_NUM_THREADS", "1")  # before tvm starts its thread pool

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.backends.tvm.targets import native_target  # noqa: E402
from qcompiler.backends.tvm.transposed_conv import node_phase_conv  # noqa: E402
from qcompiler.compiler import compile_qdq, write_library  # noqa: E402
from qcompiler.executor import session  # noqa: E402
from qcompiler.fidelity import compare, output_scales, reference_spread, run_reference  # noqa: E402
from qcompiler.layer_fidelity import cut_at_quantizers, layer_feeds  # noqa: E402
from qcompiler.models.recipes import corpus  # noqa: E402
from qcompiler.runtime import load  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency import results_flag, timings  # noqa: E402  (benchmarks/latency.py: runners taking turns)

RESULTS = Path(__file__).resolve().parent / "results" / "wild.md"
LINEAR = ("Conv", "ConvTranspose", "Gemm", "MatMul")
HELD_OUT = 64   # random inputs the library is compared on


@dataclasses.dataclass
class WildResult:
    model: str
    ops: int
    integer_mac_share: float
    float_ops: dict
    compile_s: float
    max_lsb: float
    exact_share: float
    top1_agreement: float
    worst_layer_lsb: float = 0.0   # each layer fed the reference's inputs (qcompiler.layer_fidelity)
    worst_layer: str = ""
    #: onnxruntime's own optimized run (its QLinear kernels) against the model as written: how far
    #: the reference itself drifts by near-ties, in LSBs and top-1 agreement
    ort_lsb: float = 0.0
    ort_agreement: float = 1.0
    latency_ms: dict = dataclasses.field(default_factory=dict)


def multiply_accumulates(qdq: onnx.ModelProto) -> tuple[int, int]:
    """(MACs of the layers the backend lowers to integer kernels, MACs of all linear layers): a
    Conv, ConvTranspose (one group, unless its padding would crop its input), Gemm or MatMul
    reading a dequantized activation and a dequantized constant weight (a MatMul of two
    activations runs in float between its DQ and Q)."""
    inferred = onnx.shape_inference.infer_shapes(qdq)
    shapes = {v.name: [d.dim_value or 1 for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    shapes.update({i.name: list(i.dims) for i in qdq.graph.initializer})
    producers = {out: n for n in qdq.graph.node for out in n.output}
    inits = {i.name for i in qdq.graph.initializer}
    integer = total = 0
    for node in qdq.graph.node:
        if node.op_type not in LINEAR or node.output[0] not in shapes or node.input[1] not in shapes:
            continue
        out, weight = shapes[node.output[0]], shapes[node.input[1]]
        reduced = int(np.prod(weight[1:])) if node.op_type == "Conv" else weight[0] if node.op_type != "Gemm" \
            else weight[1] if any(a.name == "transB" and a.i for a in node.attribute) else weight[0]
        macs = int(np.prod(out)) * int(reduced)
        if node.op_type == "ConvTranspose":   # every input pixel times every weight
            macs = int(np.prod([shapes[node.input[0]][0], *shapes[node.input[0]][2:]])) * int(np.prod(weight))
        total += macs
        dequantized = [producers.get(name) for name in node.input[:2]]
        if all(p is not None and p.op_type == "DequantizeLinear" for p in dequantized) \
                and dequantized[1].input[0] in inits and _lowered_if_transposed(node, shapes):
            integer += macs
    return integer, total


def _lowered_if_transposed(node, shapes) -> bool:
    """A ConvTranspose lowers where the backend's phase decomposition takes it; other layers: True."""
    if node.op_type != "ConvTranspose":
        return True
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    weight, size_in, size_out = shapes[node.input[1]], shapes[node.input[0]][2:], shapes[node.output[0]][2:]
    return node_phase_conv(attrs, weight, size_in, size_out) is not None


def measure(name: str, opset: int, folder: Path, calib_count: int = 32, runs: int = 0,
            target: str = "native") -> WildResult:
    """Quantize (W8A8, defaults), compile, compare; time it when `runs` > 0."""
    proto = corpus.build(name, opset)
    path = folder / f"{name}-opset{opset}.onnx"
    onnx.save_model(proto, str(path))
    calib = corpus.sample_inputs(proto, calib_count)
    qdq = qcompiler.quantize(qcompiler.load(path), calib, progress=False).qdq
    start = time.perf_counter()
    library = compile_qdq(qdq, target, 1)
    compile_s = time.perf_counter() - start
    out = folder / f"{name}-opset{opset}-lib"
    write_library(library, qdq, out)
    qdq_proto = qdq.to_onnx()
    held_out = corpus.sample_inputs(proto, HELD_OUT, seed=1)
    fidelity = compare(qdq_proto, load(out), held_out)
    reference, feeds = run_reference(session(qdq_proto, optimize=False), held_out)
    ours = load(out).run(feeds)
    agreement = min(float(np.mean(ours[o.name].argmax(-1) == r.argmax(-1)))
                    for o, r in zip(qdq_proto.graph.output, reference))
    optimized, _ = run_reference(session(qdq_proto), held_out)
    ort_agreement = min(float(np.mean(a.argmax(-1) == r.argmax(-1))) for a, r in zip(optimized, reference))
    integer, total = multiply_accumulates(qdq_proto)
    result = WildResult(f"{name}-opset{opset}", len(proto.graph.node), integer / max(total, 1),
                        dict(library.float_ops), compile_s, max(f.max_lsb for f in fidelity),
                        min(f.equal_share for f in fidelity), agreement)
    result.worst_layer_lsb, result.worst_layer = worst_layer(qdq_proto, held_out, folder / f"{name}-opset{opset}-cut", target)
    result.ort_lsb, result.ort_agreement = reference_spread(qdq_proto, held_out), ort_agreement
    if runs:
        result.latency_ms = _latencies(path, qdq_proto, out, {k: v[:1] for k, v in held_out.items()}, runs)
    return result


def worst_layer(qdq: onnx.ModelProto, inputs: dict, folder: Path, target: str = "native") -> tuple[float, str]:
    """The largest LSB difference of any quantized layer output, each layer fed the QDQ model's
    own inputs to it (the model cut at its quantizers, compiled once), and which layer."""
    cut, fed = cut_at_quantizers(qdq)
    model = qcompiler.ir.Model.from_onnx(cut)
    write_library(compile_qdq(model, target, 1), model, folder)
    scales = output_scales(cut)
    layers = [f for f in compare(cut, load(folder), layer_feeds(qdq, fed, inputs)) if scales.get(f.output)]
    worst = max(layers, key=lambda f: f.max_lsb, default=None)
    return (worst.max_lsb, worst.output) if worst else (0.0, "")


def _latencies(float_path: Path, qdq: onnx.ModelProto, library_dir: Path, feeds: dict, runs: int) -> dict:
    library = load(library_dir)
    fp32, int8 = session(onnx.load(str(float_path)), threads=1), session(qdq, threads=1)
    calls = {"onnxruntime FP32": lambda: fp32.run(None, feeds), "onnxruntime int8": lambda: int8.run(None, feeds),
             "qcompiler": lambda: library.run(feeds)}
    return {name: median for name, (median, _, _) in timings(calls, runs).items()}


def table(results: list[WildResult]) -> str:
    lines = ["| model | ops | MACs in integer | float ops in the library | compile s | worst layer LSB | max LSB "
             "| exact | top-1 agree | ORT's own drift: LSB, top-1 | ms (ours) | x ORT FP32 | x ORT int8 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        float_ops = ", ".join(f"{k} {v}" for k, v in sorted(r.float_ops.items())) or "none"
        ms = r.latency_ms
        speed = (f"{ms['qcompiler']:.3f} | {ms['onnxruntime FP32'] / ms['qcompiler']:.2f} | "
                 f"{ms['onnxruntime int8'] / ms['qcompiler']:.2f}") if ms else "- | - | -"
        lines.append(f"| {r.model} | {r.ops} | {100 * r.integer_mac_share:.1f}% | {float_ops} | {r.compile_s:.1f} | "
                     f"{r.worst_layer_lsb:.2f} | {r.max_lsb:.2f} | {100 * r.exact_share:.1f}% | {100 * r.top1_agreement:.1f}% | "
                     f"{r.ort_lsb:.2f}, {100 * r.ort_agreement:.1f}% | {speed} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="timed calls per runner (0: no timing)")
    parser.add_argument("--only", help="only corpus models whose name contains this")
    parser.add_argument("--results", type=Path, default=RESULTS, help="the table's file (default %(default)s; "
                        "another host's: benchmarks/results/wild_avx2.md)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, opset in corpus.CORPUS:
            if args.only and args.only not in f"{name}-opset{opset}":
                continue
            results.append(measure(name, opset, Path(tmp), runs=args.runs))
            print(table(results[-1:]).splitlines()[-1], flush=True)
    text = (f"# Models from the wild\n\n`python benchmarks/wild.py --runs {args.runs}{results_flag(args.results, RESULTS)}` "
            f"on {platform.processor() or platform.machine()} ({native_target().description}; {os.cpu_count()} cores; "
            f"one thread per runner), qcompiler {qcompiler.__version__}. W8A8 defaults, 32 "
            f"random calibration inputs, {HELD_OUT} held-out random inputs for the comparison, batch 1. Random weights: "
            "these numbers are about the compiler, not accuracy. worst layer LSB: the largest difference of any "
            "quantized tensor, each layer fed the QDQ model's own inputs (the model cut at its quantizers); max LSB: "
            "end to end, in LSBs of the output scale (an output left float, by an untied Concat or a float op last, in "
            "units of its largest magnitude). ORT's own drift: onnxruntime's optimized run of the same QDQ model "
            "against the model as written, the same measures: how far near-ties carry the reference itself. MACs in "
            "integer counts Conv/Gemm/MatMul reading a dequantized activation and a dequantized constant weight.\n\n"
            + table(results) + "\n")
    args.results.write_text(text)
    print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
