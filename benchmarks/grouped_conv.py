"""Grouped convolutions: TVM's generic grouped code against the dense dot-product kernel with a
block-diagonal weight (G times the multiply-adds), one 3x3 layer at a time, one thread, batch 1.

    python benchmarks/grouped_conv.py [--runs 200] [--results F]   # writes benchmarks/results/grouped_conv.md

For each (channels, groups) a Conv + Relu graph with 3x3 kernels on a 16x16 input is quantized
(W8A8, 8 random calibration samples) and compiled for this machine twice: once with the grouped
conv on TVM's generic code, once block-diagonal on the dot-product kernel (the rule
`apply_schedules.block_diagonal_applies` forced each way). Both libraries are timed by
latency.timings (taking turns). The last column is what the rule picks; its thresholds come from
this table. The two libraries compute the same bits (checked on one input). Last, the torchvision
RegNet export of the test corpus both ways, beside onnxruntime FP32 and int8.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

import qcompiler  # noqa: E402
from qcompiler.backends.tvm import apply_schedules  # noqa: E402
from qcompiler.backends.tvm.targets import native_target  # noqa: E402
from qcompiler.compiler import compile_qdq, write_library  # noqa: E402
from qcompiler.runtime import load  # noqa: E402
from latency import publish, results_flag, timings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "grouped_conv.md"
REGNET = ROOT / "tests" / "corpus" / "torch" / "regnet-dynamo-opset18.onnx"
SIZE = 16
#: (channels, groups): grouped, and depthwise of channel counts its own kernel does not take (not 16k)
CASES = [(c, g) for c in (32, 64, 128) for g in (2, 4, 8, 16, 32) if c // g >= 2] + [(12, 12), (24, 24)]


def grouped_model(channels: int, groups: int):
    rng = np.random.default_rng(0)
    weight = rng.normal(0, 0.2, (channels, channels // groups, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], group=groups, pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("Relu", ["y"], ["z"])]
    shape = [1, channels, SIZE, SIZE]
    graph = helper.make_graph(nodes, "grouped", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, shape)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def both_ways(qdq, folder: Path, stem: str) -> dict:
    """The QDQ model's library with its grouped convs on TVM's generic code and block-diagonal
    (block_diagonal_applies forced each way), loaded, by label."""
    libraries = {}
    for label, dense in (("generic", False), ("block-diagonal", True)):
        with mock.patch.object(apply_schedules, "block_diagonal_applies", lambda g, w, dense=dense: dense):
            write_library(compile_qdq(qdq, "native", 1), qdq, folder / f"{stem}-{label}")
        libraries[label] = load(folder / f"{stem}-{label}")
    return libraries


def measure(channels: int, groups: int, runs: int, folder: Path) -> dict:
    rng = np.random.default_rng(1)
    path = folder / f"g{channels}_{groups}.onnx"
    path.write_bytes(grouped_model(channels, groups).SerializeToString())
    calib = {"x": rng.random((8, channels, SIZE, SIZE), np.float32)}
    qdq = qcompiler.quantize(qcompiler.load(path), calib, "w8a8", progress=False).qdq
    libraries = both_ways(qdq, folder, path.stem)
    x = {"x": rng.random((1, channels, SIZE, SIZE), np.float32)}
    outputs = [lib.run(x)["z"] for lib in libraries.values()]
    if not np.array_equal(*outputs):
        raise SystemExit(f"{channels} channels, {groups} groups: the two libraries differ")
    times = timings({label: (lambda lib=lib: lib.run(x)) for label, lib in libraries.items()}, runs)
    return {"channels": channels, "groups": groups, **{k: v[0] for k, v in times.items()},
            "rule": apply_schedules.block_diagonal_applies(groups, channels // groups)}


def regnet_row(runs: int, folder: Path) -> dict:
    """The torchvision RegNet export of the test corpus (six grouped convs of 8 channels a group)
    both ways, beside onnxruntime FP32 and int8 on its QDQ model, one thread each, taking turns."""
    from qcompiler.executor import session

    rng = np.random.default_rng(1)
    calib = {"input": rng.random((32, 3, 64, 64), np.float32)}
    qdq = qcompiler.quantize(qcompiler.load(REGNET), calib, "w8a8", progress=False).qdq
    x = {"input": rng.random((1, 3, 64, 64), np.float32)}
    calls = {label: (lambda lib=lib: lib.run(x)) for label, lib in both_ways(qdq, folder, "regnet").items()}
    fp32, int8 = session(qcompiler.load(REGNET), threads=1), session(qdq, threads=1)
    calls.update({"onnxruntime FP32": lambda: fp32.run(None, x), "onnxruntime int8": lambda: int8.run(None, x)})
    return {k: v[0] for k, v in timings(calls, runs).items()}


def table(rows: list[dict], runs: int, results: Path, regnet: dict) -> str:
    lines = ["# Grouped convolutions: TVM's grouped code against block-diagonal dot-product kernels", "",
             f"`python benchmarks/grouped_conv.py --runs {runs}{results_flag(results, RESULTS)}` on "
             f"{native_target().description}: one 3x3 grouped conv (+ Relu) on a {SIZE}x{SIZE} input, W8A8, batch 1, "
             f"one thread; median ms of {runs} runs taking turns (the library's whole run, its quantize and "
             "dequantize included). Block-diagonal: the dense kernel with zero weights outside each group, G times the "
             "multiply-adds. The two libraries compute the same bits. Rule: what `block_diagonal_applies` picks.", "",
             "| channels | groups | channels a group | generic ms | block-diagonal ms | generic / block-diagonal "
             "| rule picks |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["generic"] / r["block-diagonal"]
        lines.append(f"| {r['channels']} | {r['groups']} | {r['channels'] // r['groups']} | {r['generic']:.3f} "
                     f"| {r['block-diagonal']:.3f} | {ratio:.2f}x | {'block-diagonal' if r['rule'] else 'generic'} |")
    lines += ["", f"The whole torchvision RegNet export of the test corpus ({REGNET.relative_to(ROOT)}: 3x64x64, "
              "six grouped convs of 8 channels a group, in 2, 4 and 8 groups), W8A8, 32 random calibration inputs, "
              "the same timings beside onnxruntime on its float and QDQ models:", "",
              "| generic ms | block-diagonal ms | onnxruntime FP32 ms | onnxruntime int8 ms | block-diagonal vs FP32 "
              "| vs int8 | vs generic |", "|---|---|---|---|---|---|---|",
              f"| {regnet['generic']:.3f} | {regnet['block-diagonal']:.3f} | {regnet['onnxruntime FP32']:.3f} "
              f"| {regnet['onnxruntime int8']:.3f} | {regnet['onnxruntime FP32'] / regnet['block-diagonal']:.2f}x "
              f"| {regnet['onnxruntime int8'] / regnet['block-diagonal']:.2f}x "
              f"| {regnet['generic'] / regnet['block-diagonal']:.2f}x |"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--results", type=Path, default=RESULTS, help="the table's file (default %(default)s; an "
                        "AVX2 host's: benchmarks/results/grouped_conv_avx2.md)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        rows = []
        for channels, groups in CASES:
            rows.append(measure(channels, groups, args.runs, Path(folder)))
            print(rows[-1], flush=True)
        regnet = regnet_row(args.runs, Path(folder))
    publish(table(rows, args.runs, args.results, regnet), args.results)


if __name__ == "__main__":
    main()
