"""Small ONNX graphs for tests, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcompiler import ir

ROOT = Path(__file__).resolve().parents[1]
LIGHT_DIR = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
LIGHT_MODELS = sorted(LIGHT_DIR.glob("light_*.onnx"))
BUNDLED_MODELS = sorted((ROOT / "models").glob("*.onnx"))


def value_info(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def make_proto(nodes, inputs, outputs, initializers: dict[str, np.ndarray] | None = None,
               opset: int = 17, name: str = "test") -> onnx.ModelProto:
    """A model from nodes, (name, shape) inputs and outputs (shape None: inferred), and initializers."""
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()]
    graph = helper.make_graph(
        nodes, name,
        [value_info(n, s) for n, s in inputs],
        [value_info(n, s) for n, s in outputs],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 8
    return onnx.shape_inference.infer_shapes(proto, strict_mode=True)


def make_model(*args, **kwargs) -> ir.Model:
    return ir.Model.from_onnx(make_proto(*args, **kwargs))


def bn_params(channels: int, seed: int = 0, prefix: str = "bn") -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        f"{prefix}_scale": rng.uniform(0.5, 1.5, channels).astype(np.float32),
        f"{prefix}_bias": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}_mean": rng.normal(0, 0.5, channels).astype(np.float32),
        f"{prefix}_var": rng.uniform(0.2, 2.0, channels).astype(np.float32),
    }


def bn_node(x: str, y: str, prefix: str = "bn", **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")],
                            [y], name=prefix, **attrs)


def cli(capsys, *args):
    """Run the `qcompiler` command line in-process: (exit code, stdout, stderr)."""
    from qcompiler.cli import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(proto, str(path))
    return path
