"""Random small float ONNX graphs for property-based fuzzing of quantize + compile + run, and the
oracle that judges a compiled library against its QDQ model layer by layer.

    @given(fuzz_cases())                   # hypothesis draws FuzzCases: proto, preset, calibration data
    def test(case): check(case, Path(tmp)) # compile, run, compare: an Outcome
    seeded_case(seed=0, index=7)           # or case 7 of a seeded run, uniform random choices

The graphs are chains of layers on one activation (a layer may branch and join again: residual
adds, concats), from an input [1, C, H, W] with C and H, W in 1..16; after a Flatten, the 2-D
layers (Gemm, MatMul, ...). Weights and calibration data come from a numpy generator seeded by
a drawn integer, so a case is its choices (made by a `pick`: Drawn for hypothesis, which
shrinks them; Seeded for long reproducible runs).

The contract the oracle checks (qcompiler/fidelity.py) is per layer: each quantized tensor the
library computes is within 1 LSB of the QDQ model's, when both are fed the same inputs. End to
end, a 1-LSB rounding near-tie inside the graph may grow through later layers, so `check` also
cuts the QDQ model at every activation QuantizeLinear (`cut_at_quantizers`), feeds each piece
the reference's own dequantized input, compiles that once, and compares every piece's output.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import helper

import qcompiler
from graphs import make_proto
from qcompiler.errors import QCompilerError, UnsupportedModelError
from qcompiler.layer_fidelity import cut_at_quantizers, layer_feeds
from qcompiler.quant.presets import PRESETS

MAX_CHANNELS = 16
MAX_SPATIAL = 16
OPSET = 17
#: A float output (no DequantizeLinear makes it: the weight-only presets, a float op last) is
#: compared in units of its largest magnitude (qcompiler.fidelity.compare). Fed the same inputs,
#: the library and onnxruntime differ there only by float32 rounding and summation order
#: (~1e-6); 1e-4 leaves room for that and still sees a wrong op or a dropped bias.
FLOAT_TOLERANCE = 1e-4
LSB_TOLERANCE = 1.0 + 1e-4


# ---- building graphs ---------------------------------------------------------------------------

@dataclasses.dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]


class Builder:
    """Nodes and initializers of the graph being drawn, with fresh names."""

    def __init__(self, rng: np.random.Generator, input_shape: tuple[int, ...]):
        self.rng, self.input_shape = rng, input_shape
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, np.ndarray] = {}
        self.layers: list[str] = []   # one readable line per layer, for reports
        self._count = 0

    def fresh(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, prefix: str, array) -> str:
        name = self.fresh(prefix)
        self.inits[name] = np.asarray(array, np.float32)
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        name = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [name + "_out"], name=name, **attrs))
        return name + "_out"

    def weights(self, shape, fan_in: int) -> np.ndarray:
        """He-like scale with a random gain, so activations neither vanish nor explode."""
        gain = self.rng.uniform(0.5, 2.0)
        return self.rng.normal(0.0, gain / np.sqrt(max(fan_in, 1)), shape).astype(np.float32)


def _window(pick, size: int, max_kernel: int, dilate: bool, max_stride: int = 2):
    """(kernel, dilation, stride, pad_begin, pad_end) along one spatial axis of `size`, with the
    (dilated) kernel fitting into the padded input; pads below the kernel, as exporters write."""
    kernel = pick.integer(1, max_kernel)
    dilation = pick.integer(1, 2) if dilate else 1
    stride = pick.integer(1, max_stride)
    begin = pick.integer(0, kernel - 1)
    end = pick.integer(0, kernel - 1)
    while dilation * (kernel - 1) + 1 > size + begin + end:   # too big for this input: smaller
        kernel -= 1                                            # (a 1-wide kernel always fits)
        begin, end = min(begin, kernel - 1), min(end, kernel - 1)
    return kernel, dilation, stride, begin, end


def _windows(pick, t: Tensor, max_kernel: int, dilate: bool):
    """Kernel, dilations, strides, pads for both spatial axes (often square, as most nets)."""
    rows = _window(pick, t.shape[2], max_kernel, dilate)
    cols = rows if t.shape[2] == t.shape[3] and pick.boolean() else _window(pick, t.shape[3], max_kernel, dilate)
    kernel, dilations, strides = [rows[0], cols[0]], [rows[1], cols[1]], [rows[2], cols[2]]
    return kernel, dilations, strides, [rows[3], cols[3], rows[4], cols[4]]


def _groups(pick, channels: int) -> int:
    """1, depthwise (all channels), or another divisor of the channel count."""
    divisors = [g for g in range(1, channels + 1) if channels % g == 0]
    return pick.choice(sorted(divisors, key=lambda g: (g != 1, g != channels, g)))


def conv(pick, b: Builder, t: Tensor, same: bool = False, out_channels: int | None = None) -> str:
    """A Conv of random groups (depthwise included), kernel 1-5, strides and dilations 1-2, pads
    (asymmetric too); `same`: stride 1 and odd kernels padded to keep the spatial shape."""
    cin = t.shape[1]
    groups = _groups(pick, cin)
    if out_channels is None:
        out_channels = groups * pick.integer(1, max(1, MAX_CHANNELS // groups))
    elif out_channels % groups:   # a given width (a branch) needs a group count that divides it
        groups = 1
    if same:
        k = pick.choice([1, 3, 5])
        d = pick.integer(1, 2)
        kernel, dilations, strides, pads = [k, k], [d, d], [1, 1], [d * (k - 1) // 2] * 4
    else:
        kernel, dilations, strides, pads = _windows(pick, t, 5, dilate=True)
    weight = b.const("w", b.weights((out_channels, cin // groups, *kernel), cin // groups * kernel[0] * kernel[1]))
    inputs = [t.name, weight]
    if pick.boolean():
        inputs.append(b.const("b", b.rng.normal(0, 0.2, out_channels)))
    b.layers.append(f"Conv {cin}->{out_channels} g{groups} k{kernel} s{strides} d{dilations} p{pads}")
    return b.node("Conv", inputs, group=groups, kernel_shape=kernel, strides=strides, dilations=dilations, pads=pads)


def residual(pick, b: Builder, t: Tensor) -> str:
    """x + conv(x) (Relu between, sometimes): an Add of two activations, as in ResNets."""
    branch = conv(pick, b, t, same=True, out_channels=t.shape[1])
    described = b.layers.pop()
    if pick.boolean():
        branch = b.node("Relu", [branch])
        described += " -> Relu"
    operands = [t.name, branch] if pick.boolean() else [branch, t.name]
    b.layers.append(f"Add(x, {described})" if operands[0] == t.name else f"Add({described}, x)")
    return b.node("Add", operands)


def concat(pick, b: Builder, t: Tensor) -> str:
    """Concat on the channel axis of x and conv(x), or of two convs of x (Inception-like)."""
    room = MAX_CHANNELS - t.shape[1]
    if room >= 1 and pick.boolean():
        branches = [t.name, conv(pick, b, t, same=True, out_channels=pick.integer(1, room))]
        described = ["x", b.layers.pop()]
    else:
        branches = [conv(pick, b, t, same=True, out_channels=pick.integer(1, MAX_CHANNELS // 2))
                    for _ in range(2)]
        described = [b.layers.pop(-2), b.layers.pop()]
    b.layers.append(f"Concat({', '.join(described)}; axis 1)")
    return b.node("Concat", branches, axis=1)


def _last_window_starts_inside(size: int, kernel: int, stride: int, begin: int, end: int) -> bool:
    """Whether ceil_mode's extra window starts inside the input (or its left padding).
    onnxruntime drops a window that starts beyond it, ONNX shape inference (1.17) counts it:
    such graphs have no agreed output shape, so they are drawn with ceil_mode 0."""
    windows = -(-(size + begin + end - kernel) // stride) + 1
    return (windows - 1) * stride < size + begin


def pool(pick, b: Builder, t: Tensor) -> str:
    op = pick.choice(["MaxPool", "AveragePool", "GlobalAveragePool"])
    if op == "GlobalAveragePool":
        b.layers.append(op)
        return b.node(op, [t.name])
    kernel, _, strides, pads = _windows(pick, t, 3, dilate=False)
    ceil = pick.integer(0, 1)
    if ceil and not all(_last_window_starts_inside(t.shape[2 + i], kernel[i], strides[i], pads[i], pads[i + 2])
                        for i in range(2)):
        ceil = 0
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "ceil_mode": ceil}
    if op == "AveragePool":
        attrs["count_include_pad"] = pick.integer(0, 1)
    b.layers.append(f"{op} k{kernel} s{strides} p{pads}" + (" ceil" if attrs["ceil_mode"] else "")
                    + (f" count_include_pad={attrs['count_include_pad']}" if op == "AveragePool" else ""))
    return b.node(op, [t.name], **attrs)


def resize(pick, b: Builder, t: Tensor) -> str:
    """Nearest-neighbour upsampling by an integer factor (2-4, to at most twice MAX_SPATIAL),
    the two ways exporters write it."""
    factor = pick.integer(2, max(2, min(4, 2 * MAX_SPATIAL // max(t.shape[2], t.shape[3]))))
    mode, nearest = pick.choice([("asymmetric", "floor"), ("half_pixel", "round_prefer_floor")])
    scales = b.const("scales", [1.0, 1.0, factor, factor])
    b.layers.append(f"Resize nearest x{factor} ({mode}, {nearest})")
    return b.node("Resize", [t.name, "", scales], mode="nearest", coordinate_transformation_mode=mode,
                  nearest_mode=nearest)


def activation(pick, b: Builder, t: Tensor) -> str:
    op = pick.choice(["Relu", "Clip", "HardSwish"])
    b.layers.append("Clip(0, 6)" if op == "Clip" else op)
    inputs = [t.name, b.const("lo", 0.0), b.const("hi", 6.0)] if op == "Clip" else [t.name]
    return b.node(op, inputs)


def _channel_constant(pick, b: Builder, t: Tensor, prefix: str, values) -> str:
    """A scalar or one value per channel ([1, C, 1, 1]; [C] on a 2-D tensor's features)."""
    if pick.boolean():
        return b.const(prefix, values(()))
    shape = (1, t.shape[1], 1, 1) if len(t.shape) == 4 else (t.shape[1],)
    return b.const(prefix, values(shape))


def add_constant(pick, b: Builder, t: Tensor) -> str:
    c = _channel_constant(pick, b, t, "k", lambda shape: b.rng.normal(0, 0.5, shape))
    b.layers.append(f"Add constant {list(b.inits[c].shape)}")
    return b.node("Add", [t.name, c])


def mul_constant(pick, b: Builder, t: Tensor) -> str:
    c = _channel_constant(pick, b, t, "m", lambda shape: b.rng.uniform(-2.0, 2.0, shape))
    b.layers.append(f"Mul constant {list(b.inits[c].shape)}")
    return b.node("Mul", [t.name, c])


def head(pick, b: Builder, t: Tensor) -> str:
    """A classifier head: Flatten (straight, or after a global average pool), then Gemm or MatMul."""
    name = t.name
    if t.shape[2] * t.shape[3] > 1 and pick.boolean():
        name = b.node("GlobalAveragePool", [name])
        b.layers.append("GlobalAveragePool")
    b.layers.append("Flatten")
    flat = Tensor(b.node("Flatten", [name]), (1, int(np.prod(_shape(b, name)[1:]))))
    return pick.choice([gemm, matmul])(pick, b, flat)


def gemm(pick, b: Builder, t: Tensor) -> str:
    features, out = t.shape[1], pick.integer(1, MAX_CHANNELS)
    trans_b = pick.integer(0, 1)
    weight = b.weights((out, features) if trans_b else (features, out), features)
    inputs = [t.name, b.const("fc", weight)]
    if pick.boolean():
        inputs.append(b.const("fcb", b.rng.normal(0, 0.2, out)))
    b.layers.append(f"Gemm {features}->{out} transB={trans_b}")
    return b.node("Gemm", inputs, transB=trans_b)


def matmul(pick, b: Builder, t: Tensor) -> str:
    """By a constant [K, N] on the last axis (of a 2-D tensor, or of NCHW's W)."""
    features, out = t.shape[-1], pick.integer(1, MAX_CHANNELS)
    b.layers.append(f"MatMul {list(t.shape)} x [{features}, {out}]")
    return b.node("MatMul", [t.name, b.const("mm", b.weights((features, out), features))])


#: Layers by the rank of the tensor they read, simplest first (hypothesis shrinks towards the front).
LAYERS_4D = {"activation": activation, "conv": conv, "pool": pool, "add_constant": add_constant,
             "mul_constant": mul_constant, "residual": residual, "concat": concat, "resize": resize,
             "matmul": matmul, "head": head}
LAYERS_2D = {"activation": activation, "gemm": gemm, "matmul": matmul, "add_constant": add_constant,
             "mul_constant": mul_constant}
#: The first layer has weights, as in the nets qcompiler is for: a graph of only elementwise ops
#: and pools has nothing to quantize but its input and would spend a compile on little.
FIRST = ["conv", "residual", "concat", "matmul"]
#: Layers an activation often follows directly.
ACTIVATED = {"conv", "matmul", "gemm", "head"}


def _applicable(t: Tensor, first: bool) -> list[str]:
    if first:
        return FIRST
    if len(t.shape) == 2:
        return list(LAYERS_2D)
    kinds = list(LAYERS_4D)
    if max(t.shape[2], t.shape[3]) > MAX_SPATIAL:   # upsampled once already
        kinds.remove("resize")
    return kinds


def _shape(b: Builder, name: str) -> tuple[int, ...]:
    """The tensor's shape by onnx shape inference (strict: an invalid layer fails here, drawn)."""
    proto = make_proto(b.nodes, [("x", list(b.input_shape))], [(name, None)], b.inits, opset=OPSET)
    dims = tuple(d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim)
    assert dims and all(d >= 1 for d in dims), (b.layers, dims)
    return dims


# ---- cases -------------------------------------------------------------------------------------

@dataclasses.dataclass
class FuzzCase:
    proto: onnx.ModelProto
    preset: str
    calib: dict[str, np.ndarray]
    layers: list[str]            # what each layer is, in words
    seed: int                    # of the weights and the calibration data

    @property
    def ops(self) -> list[str]:
        return [n.op_type for n in self.proto.graph.node]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(d.dim_value for d in self.proto.graph.input[0].type.tensor_type.shape.dim)

    def describe(self) -> str:
        return f"{self.preset}, input {list(self.input_shape)}, seed {self.seed}: " + " -> ".join(self.layers)

    def __repr__(self) -> str:   # what hypothesis prints for a falsifying example
        return f"FuzzCase({self.describe()})"

    def _repr_pretty_(self, printer, cycle) -> None:   # hypothesis's printer prefers this
        printer.text(repr(self))

    def save(self, folder: Path) -> list[Path]:
        """The float model, its calibration data and a line saying how to replay it."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "model.onnx", folder / "calib.npz", folder / "case.txt"]
        onnx.save_model(self.proto, str(paths[0]))
        np.savez(paths[1], **self.calib)
        paths[2].write_text(f"{self.describe()}\n\nqcompiler compile {paths[0].name} --calib {paths[1].name} "
                            f"--preset {self.preset} -o out\n")
        return paths


def _calibration(rng: np.random.Generator, kind: str, shape: tuple[int, ...], count: int) -> np.ndarray:
    """Inputs like a normalized image (normal), a raw one (uniform, non-negative) or a shifted,
    wide activation."""
    size = (count, *shape[1:])
    if kind == "uniform":
        return rng.uniform(0.0, 1.0, size).astype(np.float32)
    if kind == "shifted":
        return rng.normal(rng.uniform(-2, 2), rng.uniform(0.5, 4), size).astype(np.float32)
    return rng.normal(0.0, 1.0, size).astype(np.float32)


def build_case(pick, max_layers: int = 3, presets=tuple(PRESETS), samples: int = 8) -> FuzzCase:
    """A valid float ONNX graph of 1..max_layers layers, a preset, and seeded calibration data,
    every choice made by `pick` (Drawn: hypothesis; Seeded: a random generator)."""
    seed = pick.integer(0, 2**32 - 1)
    rng = np.random.default_rng(seed)
    shape = (1, pick.integer(1, MAX_CHANNELS), pick.integer(1, MAX_SPATIAL), pick.integer(1, MAX_SPATIAL))
    b = Builder(rng, shape)
    t = Tensor("x", shape)
    for index in range(pick.integer(1, max_layers)):
        kind = pick.choice(_applicable(t, first=index == 0))
        name = (LAYERS_2D if len(t.shape) == 2 else LAYERS_4D)[kind](pick, b, t)
        if kind in ACTIVATED and pick.boolean():   # conv + activation, the pattern backends fuse
            name = activation(pick, b, Tensor(name, ()))
        t = Tensor(name, _shape(b, name))
    proto = make_proto(b.nodes, [("x", list(shape))], [(t.name, list(t.shape))], b.inits, opset=OPSET, name="fuzz")
    onnx.checker.check_model(proto, full_check=True)
    preset = pick.choice(presets)
    kind = pick.choice(["normal", "uniform", "shifted"])
    return FuzzCase(proto, preset, {"x": _calibration(rng, kind, shape, samples)}, b.layers, seed)


class Drawn:
    """Choices drawn by hypothesis (they shrink: integers towards the low end, choices to the first)."""

    def __init__(self, draw):
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self.draw(st.integers(lo, hi))

    def choice(self, options):
        return self.draw(st.sampled_from(options))

    def boolean(self) -> bool:
        return self.draw(st.booleans())


class Seeded:
    """Choices uniform at random from a seeded generator: every case independent of the others
    (hypothesis's own generation dwells on variations of one example, which a long fuzzing run
    does not want), and case `index` of `seed` the same whatever ran before it."""

    def __init__(self, seed: int, index: int):
        self.rng = np.random.default_rng([seed, index])

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.integers(lo, hi, endpoint=True))

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def boolean(self) -> bool:
        return bool(self.rng.integers(2))


@st.composite
def fuzz_cases(draw, max_layers: int = 3, presets=tuple(PRESETS), samples: int = 8) -> FuzzCase:
    """The hypothesis strategy: FuzzCases."""
    return build_case(Drawn(draw), max_layers, presets, samples)


def seeded_case(seed: int, index: int, max_layers: int = 3, presets=tuple(PRESETS), samples: int = 8) -> FuzzCase:
    """Case `index` of a seeded run (benchmarks/fuzz.py), reproducible on its own."""
    return build_case(Seeded(seed, index), max_layers, presets, samples)


# ---- the oracle: per-layer comparison (qcompiler.layer_fidelity) --------------------------------

def build_library(qdq: onnx.ModelProto, folder: Path):
    """Compile a QDQ model for this host as it is (no quantization) and load the library."""
    from qcompiler.compiler import compile_qdq, write_library
    from qcompiler.runtime import load

    model = qcompiler.ir.Model.from_onnx(qdq)
    write_library(compile_qdq(model, "native", 1), model, folder)
    return load(folder)


@dataclasses.dataclass
class Worst:
    """The largest difference over some outputs, and where."""

    value: float = 0.0
    where: str = ""

    def take(self, value: float, where: str) -> None:
        if value > self.value or not self.where:
            self.value, self.where = value, where


def worst_by_kind(fidelity, scales: dict) -> tuple[Worst, Worst]:
    """(largest LSB difference over the quantized outputs, largest relative one over the float)."""
    lsb, rel = Worst(), Worst()
    for f in fidelity:
        (lsb if scales.get(f.output) else rel).take(f.max_lsb, f.output)
    return lsb, rel


@dataclasses.dataclass
class Outcome:
    """What one case did. status: ok, disagree (a layer over 1 LSB, or a float output over
    FLOAT_TOLERANCE), refused (UnsupportedModelError, on purpose), error (another QCompilerError),
    crash (any other exception)."""

    status: str
    compile_s: float = 0.0
    end_to_end: Worst | None = None    # LSB over the quantized outputs, the library as compiled
    end_to_end_float: Worst | None = None   # relative, its float outputs
    layers: Worst | None = None        # LSB, each layer fed the reference's inputs (the cut model)
    floats: Worst | None = None        # relative, the float outputs of the cut model
    error: str = ""
    qdq: onnx.ModelProto | None = None

    def line(self) -> str:
        if self.status in ("refused", "error", "crash"):
            return f"{self.status}: {self.error.splitlines()[0] if self.error else ''}"
        parts = [self.status]
        if self.layers.where:   # some output is quantized
            end = f"{self.end_to_end.value:.2f} LSB" if self.end_to_end.where else "- (a float output)"
            parts += [f"end to end {end}", f"worst layer {self.layers.value:.2f} LSB ({self.layers.where})"]
        if self.floats.where:
            parts.append(f"float outputs {self.floats.value:.2g} of their range ({self.floats.where})")
        return ", ".join(parts)


def _failure(status: str, exc: BaseException, compile_s: float = 0.0, qdq=None) -> Outcome:
    text = f"{type(exc).__name__}: {exc}"
    if status == "crash":
        text += "\n" + "".join(traceback.format_exception(exc)[-6:])
    return Outcome(status, compile_s, error=text, qdq=qdq)


def check(case: FuzzCase, folder: Path) -> Outcome:
    """Quantize and compile the case with the public API (which checks the library against the
    QDQ model end to end, `built.fidelity`), then compile the cut model (`cut_at_quantizers`)
    and compare each layer fed the reference's inputs."""
    from qcompiler.fidelity import compare, output_scales

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(case.proto, str(path))
    start = time.perf_counter()
    try:
        built = qcompiler.compile(path, case.calib, "native", output_dir=folder / "lib", preset=case.preset,
                                  check_samples=len(case.calib["x"]), progress=False)
    except UnsupportedModelError as exc:
        return _failure("refused", exc, time.perf_counter() - start)
    except QCompilerError as exc:
        return _failure("error", exc, time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001  (a crash is a finding: record it, do not stop the run)
        return _failure("crash", exc, time.perf_counter() - start)
    compile_s = time.perf_counter() - start
    qdq = built.qdq.to_onnx()
    end_to_end, end_to_end_float = worst_by_kind(built.fidelity, output_scales(qdq))
    try:
        cut, fed = cut_at_quantizers(qdq)
        feeds = layer_feeds(qdq, fed, case.calib)
        layers, floats = worst_by_kind(compare(cut, build_library(cut, folder / "layers"), feeds), output_scales(cut))
    except QCompilerError as exc:
        return _failure("error", exc, compile_s, qdq)
    except Exception as exc:  # noqa: BLE001
        return _failure("crash", exc, compile_s, qdq)
    agrees = layers.value <= LSB_TOLERANCE and floats.value <= FLOAT_TOLERANCE
    return Outcome("ok" if agrees else "disagree", compile_s, end_to_end, end_to_end_float, layers, floats, qdq=qdq)
