"""What a layer costs on a target at each weight bit width: the bytes its weights take in the
library (packed and padded exactly as kernel selection stores them: apply_schedules'
kernel_kind, weight_layout, packed_bits and packed_weights, so that the two cannot drift), and
the measured time of the integer kernel the library would run for it (built from the same
tasks as the build, timed with MetaSchedule's local or RPC runner, as `tune` does).

A layer without a dot-product kernel on the target (a grouped conv the build does not make
block-diagonal, a target without one) keeps int8 weights whatever its bits: fewer bits save it
nothing, and the cost says so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import onnx

from qcompiler.backends.tvm.apply_schedules import (block_diagonal_applies, kernel_kind, packed_bits, packed_weights,
                                                    weight_layout)
from qcompiler.backends.tvm.schedules import depthwise, geometry
from qcompiler.backends.tvm.schedules.requantize import RequantizeCode
from qcompiler.backends.tvm.targets import TargetSpec
from qcompiler.backends.tvm.transposed_conv import node_phase_conv
from qcompiler.files import cache_root, read_cache, write_cache
from qcompiler.ir import Model
from qcompiler.ops import QUANTIZED_LAYERS


LATENCY_FORMAT = "qcompiler-latency/1"
#: Part of the cache key: raised whenever a kernel's code or template tile changes, so that times
#: measured on older kernels are not reused (2: AVX2's depthwise tile; 3: grouped convs block-diagonal;
#: 4: 4-bit depthwise weights decoded once a call; 5: the VNNI depthwise kernel; 6: depthwise kernels
#: split over threads from 2^17 multiply-adds).
KERNELS_VERSION = 6


@dataclasses.dataclass(frozen=True)
class LayerShape:
    """A weighted layer's geometry, NHWC: `kind` conv (groups 1), depthwise, grouped, matmul or other."""

    name: str
    kind: str
    n: int
    h: int
    w: int
    ci: int
    co: int
    kh: int = 1
    kw: int = 1
    stride: tuple = (1, 1)
    dilation: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    parameters: int = 0
    groups: int = 1

    @property
    def dense(self) -> bool:
        """Built as a dense conv: groups 1, or a grouped one with a block-diagonal weight."""
        return self.kind == "conv" or (self.kind == "grouped"
                                       and block_diagonal_applies(self.groups, self.ci // self.groups))

    def output_hw(self) -> tuple[int, int]:
        return geometry.output_size(self.h, self.w, self.kh, self.kw, self.stride, self.dilation, self.padding)


def _shapes(model: Model) -> dict[str, list]:
    """Every value's static shape, by onnx shape inference on the model."""
    inferred = onnx.shape_inference.infer_shapes(model.to_onnx())
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.HasField("dim_value") else None for d in dims]
    return shapes


def layer_shapes(model: Model, names, batch: int = 1) -> dict[str, LayerShape]:
    """The geometry of the named weighted layers of a float model (its batch taken as `batch`)."""
    shapes, out = _shapes(model), {}
    nodes = {n.name: n for n in model.graph.nodes if n.op in QUANTIZED_LAYERS}
    for name in names:
        node = nodes[name]
        weight = model.const_value(node.inputs[1])
        x = [batch if i == 0 else d for i, d in enumerate(shapes.get(node.inputs[0].name) or [])]
        y = shapes.get(node.outputs[0].name) or []
        out[name] = (_transposed_shape(node, weight, x, y) if node.op == "ConvTranspose" else None) \
            or _layer_shape(node, weight, x, batch)
    return out


def _transposed_shape(node, weight: np.ndarray, x: list, y: list) -> LayerShape | None:
    """A ConvTranspose as the backend builds it: its stride-1 phase conv (transposed_conv.py)."""
    if weight.ndim != 4 or len(x) != 4 or len(y) != 4 or None in x[1:] or None in y[2:]:
        return None
    phase = node_phase_conv(node.attrs, weight.shape, x[2:], y[2:])
    if phase is None:
        return None
    co, ci, kh, kw = phase.weight.shape
    return LayerShape(node.name, "conv", x[0], x[2], x[3], ci, co, kh, kw, padding=phase.padding,
                      parameters=int(phase.weight.size))


def _layer_shape(node, weight: np.ndarray, x: list, batch: int) -> LayerShape:
    if node.op == "Conv" and weight.ndim == 4 and len(x) == 4 and None not in x:
        groups = int(node.attrs.get("group", 1))
        co, _, kh, kw = weight.shape
        kind = "conv" if groups == 1 else "depthwise" if groups == x[1] == co and weight.shape[1] == 1 else "grouped"
        pads = tuple(node.attrs.get("pads", (0, 0, 0, 0)))
        return LayerShape(node.name, kind, x[0], x[2], x[3], x[1], co, kh, kw,
                          tuple(node.attrs.get("strides", (1, 1))), tuple(node.attrs.get("dilations", (1, 1))),
                          (pads[0], pads[1], pads[2], pads[3]), int(weight.size), groups)
    if node.op in ("Gemm", "MatMul") and weight.ndim == 2 and len(x) == 2:
        transposed = node.op == "Gemm" and node.attrs.get("transB", 0)
        co, ci = weight.shape if transposed else weight.shape[::-1]
        return LayerShape(node.name, "matmul", 1, 1, x[0] or batch, ci, co, parameters=int(weight.size))
    return LayerShape(node.name, "other", batch, 1, 1, 0, 0, parameters=int(weight.size))


def _grid(bits: int) -> tuple[bool, bool]:
    """(on the 4-bit grid, every channel within 4 values) of narrow symmetric weights at `bits`."""
    return bits <= 4, bits <= 2


def stored_weight_bytes(layer: LayerShape, bits: int, spec: TargetSpec) -> int:
    """Bytes of the layer's weights in a library for `spec` when quantized to `bits`."""
    on_grid, fits2 = _grid(bits)
    if layer.dense or layer.kind == "matmul":
        ho, wo = layer.output_hw()
        kind = kernel_kind(spec.dot_kernel, on_grid, layer.ci, wo, True)
        if kind is None:
            return layer.parameters
        isa, ci_p, co_p = weight_layout(kind, layer.ci, layer.co, layer.n * ho * wo)
        padded = np.zeros((co_p, layer.kh, layer.kw, ci_p), np.int8)
        return sum(p.nbytes for p in packed_weights(padded, isa, packed_bits(kind, on_grid, fits2)))
    if layer.kind == "depthwise" and depthwise.applies(layer.co) and on_grid:
        return depthwise.pack_weight_int4(np.zeros((layer.kh, layer.kw, layer.co), np.int8)).nbytes
    return layer.parameters


def kernel_task(layer: LayerShape, bits: int, spec: TargetSpec):
    """The tuning task (int8_conv.ConvTask, depthwise.DepthwiseTask) of the kernel a build makes
    for the layer at `bits`; None where the layer has none (TVM's generic code: not timed per bit
    width, its time does not depend on the bits). Its requantization is the slowest form (ties
    possible, int64 products): which form a build picks depends on the quantized weights and
    scales (RequantizeCode), which `built_tasks` reads from real builds."""
    from qcompiler.backends.tvm.schedules.int8_conv import SINGLE_THREADED, SIXTEEN_REGISTERS, ConvTask

    on_grid, fits2 = _grid(bits)
    code = RequantizeCode("uint8", True, False)
    if layer.dense or layer.kind == "matmul":
        ho, wo = layer.output_hw()
        kind = kernel_kind(spec.dot_kernel, on_grid, layer.ci, wo, True)
        if kind is None or kind == "smmla":
            return None
        isa, ci_p, co_p = weight_layout(kind, layer.ci, layer.co, layer.n * ho * wo)
        return ConvTask(layer.n, layer.h, layer.w, ci_p, co_p, layer.kh, layer.kw, layer.stride, layer.dilation,
                        layer.padding, code, packed_bits(kind, on_grid, fits2), isa)
    if layer.kind == "depthwise" and depthwise.applies(layer.co):
        return depthwise.DepthwiseTask(layer.n, layer.h, layer.w, layer.co, layer.kh, layer.kw, layer.stride,
                                       layer.dilation, layer.padding, code, on_grid,
                                       parallel=spec.dot_kernel not in SINGLE_THREADED,
                                       sixteen_registers=spec.dot_kernel in SIXTEEN_REGISTERS,
                                       vnni=spec.dot_kernel == "vnni")
    return None


@dataclasses.dataclass
class LatencyTable:
    """Measured kernel milliseconds per layer and bit width on one target (None: no kernel of its
    own), the spread of repeated measurements, and where they were taken."""

    target: str
    device: str
    ms: dict[str, dict[int, float | None]]
    spread: dict[str, dict[int, float]]
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps({"format": LATENCY_FORMAT, **dataclasses.asdict(self)}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LatencyTable:
        body = json.loads(text)
        if body.pop("format", None) != LATENCY_FORMAT:
            raise ValueError("not a qcompiler latency table")
        as_int = lambda d: {layer: {int(b): v for b, v in row.items()} for layer, row in d.items()}  # noqa: E731
        return cls(body["target"], body["device"], as_int(body["ms"]), as_int(body["spread"]), body["seconds"])


def _requantization_cost(task) -> tuple:
    """Orders requantization forms from cheapest to dearest: int32 parts, then int64 high words,
    then full int64 products, then round-half-even ties."""
    code = task.requantize
    return (code.ties, not code.int32, not code.high_word) if code is not None else (False, False, False)


def _unrequantized(task):
    """The task without what varies between layers of one shape (their requantization form, the
    first layer's padding value), to match the built kernels to kernel_task's."""
    extra = {"pad_value": 0} if hasattr(task, "pad_value") else {}
    return dataclasses.replace(task, requantize=None, **extra)


def built_tasks(layers: dict[str, LayerShape], qdq_by_bits: dict[int, onnx.ModelProto], spec: TargetSpec) -> dict:
    """(layer, bits) -> the kernel task that a build of the model quantized uniformly at `bits`
    makes for the layer: its requantization form as the build picks it from the quantized
    weights and scales (the int32 form is ~1.5x faster than the int64 one that kernel_task
    assumes). A layer's form depends on its own weights alone, so the uniform builds give each
    layer's form at each width. Where layers of one shape got different forms, the dearest."""
    from qcompiler.backends.tvm.tuning import conv_tasks

    found = {}
    for bits, qdq in qdq_by_bits.items():
        made: dict = {}
        for task in conv_tasks(qdq, spec, 1):
            made.setdefault(_unrequantized(task), []).append(task)
        for name, shape in layers.items():
            task = kernel_task(shape, bits, spec)
            matches = made.get(_unrequantized(task)) if task is not None else None
            if matches:
                found[(name, bits)] = max(matches, key=_requantization_cost)
    return found


def latency_cache_path(tasks: dict, spec: TargetSpec, device: str) -> Path:
    names = sorted((layer, bits, task.name() if task is not None else "") for (layer, bits), task in tasks.items())
    digest = hashlib.sha256(repr((LATENCY_FORMAT, KERNELS_VERSION, spec.name, device, names)).encode()).hexdigest()[:32]
    return cache_root() / "latency" / f"{spec.name}-{digest}.json"


def measure_latency(layers: dict[str, LayerShape], choices, spec: TargetSpec, rpc: str | None = None,
                    repeats: int = 3, use_cache: bool = True, built: dict | None = None) -> LatencyTable:
    """Each layer's kernel at each bit width, built and timed `repeats` times (median; spread =
    (max - min) / median); one kernel is timed once however many layers share it. `built`
    ((layer, bits) -> task, from built_tasks) gives the kernels as builds made them; the others
    are kernel_task's. Cached per target, device and kernel."""
    from qcompiler.backends.tvm import tuning
    from qcompiler.backends.tvm.targets import tvm_target

    device = rpc or "local"
    tasks = {(name, bits): (built or {}).get((name, bits)) or kernel_task(shape, bits, spec)
             for name, shape in layers.items() for bits in choices}
    path = latency_cache_path(tasks, spec, device)
    cached = read_cache(path, LatencyTable.from_json) if use_cache else None
    if cached is not None:
        return cached
    start = time.perf_counter()
    unique = {t.name(): t for t in tasks.values() if t is not None}
    measurer = tuning.Measurer(tvm_target(spec), rpc)
    funcs = {name: tuning.scheduled(task, tuning.tuned_pixel_tile(task)) for name, task in unique.items()}
    runs = dict(zip(funcs, measurer.repeated_ms(list(funcs.values()), repeats)))
    median = {name: float(np.median(v)) for name, v in runs.items() if v}
    spread = {name: float((max(v) - min(v)) / np.median(v)) for name, v in runs.items() if v}
    table = LatencyTable(spec.name, device, {}, {}, 0.0)
    for (layer, bits), task in tasks.items():
        key = task.name() if task is not None else None
        table.ms.setdefault(layer, {})[bits] = median.get(key) if key else None
        table.spread.setdefault(layer, {})[bits] = spread.get(key, 0.0) if key else 0.0
    table.seconds = time.perf_counter() - start
    if use_cache:
        write_cache(path, table.to_json())
    return table
