"""How quantize and compile time grow with the size of a graph: long chains, as exporters and
users write them, measured through the command a user runs.

    python benchmarks/scale.py [--sizes 500,1500,5000]    # writes benchmarks/results/scale.md

Two graphs per size N: `table chain` (a Conv, then N alternating Relu/Neg: each op is quantized
and becomes a lookup table, so the library holds N integer kernels) quantized W8A8 and compiled;
and `float chain` (a QuantizeLinear/DequantizeLinear pair, then N alternating Sin/Neg left in
float, one long fused function) compiled as a QDQ model. Linear time means the seconds per 1000
nodes stay flat as N grows. Each command's wall time includes its start (imports, about 3 s).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qcompiler

RESULTS = Path(__file__).resolve().parent / "results" / "scale.md"


def table_chain(n: int, path: Path) -> Path:
    weight = np.random.RandomState(0).randn(4, 3, 3, 3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], name="conv", pads=[1, 1, 1, 1])]
    nodes += [helper.make_node("Relu" if i % 2 == 0 else "Neg", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    return _save(nodes, [numpy_helper.from_array(weight, "w")], n, path, ["N", 3, 8, 8], ["N", 4, 8, 8])


def float_chain(n: int, path: Path) -> Path:
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"), numpy_helper.from_array(np.array(128, np.uint8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["t0"], name="dq")]
    nodes += [helper.make_node("Sin" if i % 2 == 0 else "Neg", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    return _save(nodes, inits, n, path, [1, 4, 8, 8], [1, 4, 8, 8])


def _save(nodes, inits, n, path, in_shape, out_shape) -> Path:
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, out_shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def timed(*args) -> float:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "qcompiler", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"qcompiler {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return time.perf_counter() - start


def measure(sizes: list[int], work: Path) -> list[tuple]:
    calib = work / "calib.npz"
    np.savez(calib, x=np.random.RandomState(1).randn(16, 3, 8, 8).astype(np.float32))
    rows = []
    for n in sizes:
        model = table_chain(n, work / f"table{n}.onnx")
        quantize = timed("quantize", model, "--calib", calib, "-o", work / f"q{n}", "--no-progress", "--force")
        compile_ = timed("compile", model, "--calib", calib, "-o", work / f"t{n}", "--no-progress", "--force")
        rows.append(("table chain", n + 1, quantize, compile_))
        print(f"table chain {n + 1:>6} nodes: quantize {quantize:6.1f} s, compile {compile_:6.1f} s", flush=True)
        qdq = float_chain(n, work / f"float{n}.qdq.onnx")
        compile_ = timed("compile", qdq, "-o", work / f"f{n}", "--force")
        rows.append(("float chain", n + 2, None, compile_))
        print(f"float chain {n + 2:>6} nodes: compile {compile_:6.1f} s", flush=True)
    return rows


def table(rows: list[tuple]) -> str:
    lines = ["| graph | nodes | quantize s | compile s (quantize + build) | compile s per 1000 nodes |", "|---|---|---|---|---|"]
    for kind, nodes, quantize, compile_ in rows:
        q = f"{quantize:.1f}" if quantize is not None else "-"
        lines.append(f"| {kind} | {nodes} | {q} | {compile_:.1f} | {1000 * compile_ / nodes:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1500,5000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory() as work:
        rows = measure(sizes, Path(work))
    text = (f"# Scale: time against graph size\n\n`python benchmarks/scale.py --sizes {args.sizes}` on "
            f"{platform.processor() or platform.machine()} ({__import__('os').cpu_count()} cores), qcompiler "
            f"{qcompiler.__version__}. Wall time of each command as a user runs it (start-up included). "
            "The graphs are described in benchmarks/scale.py.\n\n" + table(rows) + "\n")
    print(table(rows))
    RESULTS.write_text(text)
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
