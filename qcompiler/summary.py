"""`qcompiler inspect`: what is in a model and what quantization will do with it."""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler.ir import Model, ops_histogram
from qcompiler.ops import QUANTIZED_LAYERS


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    op: str
    weight_shape: tuple[int, ...]
    params: int


@dataclasses.dataclass(frozen=True)
class Summary:
    path: str
    ir_version: int
    opset: int
    producer: str
    inputs: list[tuple[str, str, list]]
    outputs: list[tuple[str, str, list]]
    ops: dict[str, int]
    ops_after: dict[str, int]
    params: int
    param_bytes: int
    batchnorms_folded: int
    layers: list[Layer]
    unsupported: dict[str, list[str]]


def summarize(original: Model, optimized: Model, bn_folded: int, producer: str = "",
              unsupported: dict[str, list[str]] | None = None) -> Summary:
    """Summarize `original`; `optimized` is it after the default pipeline (what quantize sees),
    in which `bn_folded` BatchNormalization nodes were folded into the layer before them;
    `unsupported`: op type -> nodes the backend cannot lower (the driver asks the backend)."""
    def io(tensors):
        return [(t.name, str(np.dtype(t.dtype)) if t.dtype is not None else "?", list(t.shape or [])) for t in tensors]

    constants = [np.asarray(t.values) for t in optimized.tensors().values() if hasattr(t, "values")]
    floats = [c for c in constants if c.dtype.kind == "f"]
    layers = []
    for node in optimized.graph.nodes:
        weight = optimized.const_value(optimized.input_or_none(node, 1)) if node.op in QUANTIZED_LAYERS else None
        if weight is not None:
            bias = optimized.const_value(optimized.input_or_none(node, 2))
            layers.append(Layer(node.name, node.op, tuple(weight.shape), weight.size + (0 if bias is None else bias.size)))
    return Summary(
        path=original.path or "", ir_version=original.ir_version, opset=original.opset, producer=producer,
        inputs=io(original.graph.inputs), outputs=io(original.graph.outputs),
        ops=ops_histogram(original.graph.nodes), ops_after=ops_histogram(optimized.graph.nodes),
        params=sum(c.size for c in floats), param_bytes=sum(c.nbytes for c in floats),
        batchnorms_folded=bn_folded, layers=layers, unsupported=dict(unsupported or {}),
    )


def format_summary(s: Summary, max_layers: int = 40) -> str:
    lines = [f"model      {s.path}", f"format     IR {s.ir_version}, opset {s.opset}" + (f", from {s.producer}" if s.producer else "")]
    for label, tensors in (("input", s.inputs), ("output", s.outputs)):
        lines += [f"{label:<10} {name}  {dtype}  {shape}" for name, dtype, shape in tensors]
    lines.append("ops        " + ", ".join(f"{op} {n}" for op, n in s.ops.items()))
    lines.append("after canonicalize + fold-batchnorm + fold-scale:")
    lines.append("ops        " + ", ".join(f"{op} {n}" for op, n in s.ops_after.items()))
    lines.append(f"parameters {s.params:,} ({format_bytes(s.param_bytes)} as float)")
    left = s.ops.get("BatchNormalization", 0) - s.batchnorms_folded
    lines.append(f"batchnorm  {s.batchnorms_folded} folded into the layer before, {left} became Mul+Add or stay")
    lines.append(f"quantized layers ({len(s.layers)}: weights per output channel, inputs per tensor)")
    width = max([len(layer.name) for layer in s.layers] + [4])
    for layer in s.layers[:max_layers]:
        lines.append(f"  {layer.name:<{width}}  {layer.op:<13} weight {'x'.join(map(str, layer.weight_shape)):<14} {layer.params:>10,} params")
    if len(s.layers) > max_layers:
        lines.append(f"  ... and {len(s.layers) - max_layers} more (--all lists every layer)")
    if s.unsupported:
        lines.append(f"unsupported ({len(s.unsupported)} op types; the TVM backend cannot lower them, compile refuses "
                     "the model; quantize runs it):")
        for op, names in sorted(s.unsupported.items()):
            shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            lines.append(f"  {op} x{len(names)}: {shown}")
    else:
        lines.append("unsupported none")
    return "\n".join(lines)


def format_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            break
        n /= 1024
    return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
