"""QDQ ONNX -> integer Relax -> a shared library for a target, plus its model.json metadata."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import tvm
from onnx import numpy_helper

from qcompiler.backends.tvm.targets import TargetSpec, get_target, tvm_target
from qcompiler.errors import OutputError, UnsupportedModelError, UsageError

@dataclass
class Library:
    """A built module before export, and what the build did."""

    executable: object
    target: TargetSpec
    lowered: Counter
    float_ops: Counter
    batch: int
    outputs: list[tuple[list[int], str]]   # shape and dtype of each output, in order
    seconds: dict = field(default_factory=dict)
    kernels: Counter = field(default_factory=Counter)   # hand-written kernels used, by kind
    stages: dict = field(default_factory=dict)   # seconds of each named backend pass (qcompiler.*)
    tuned_kernels: list = field(default_factory=list)   # kernels that took their tile from a tuning database
    weight_bytes: int = 0   # the layers' weights as the library stores them (packed, padded)


def unconvertible_ops(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Op type -> node names for every node TVM's ONNX frontend has no converter for, or converts
    wrong in a way ONNX's own node tests found (tests/backends/test_fallback_onnx_node.py): the
    one decision `inspect` shows and `compile` refuses on."""
    from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

    known = _get_convert_map()
    missing: dict[str, list[str]] = {}
    for node in model.graph.node:
        standard = node.domain in ("", "ai.onnx")
        if not standard or node.op_type not in known:
            missing.setdefault(node.op_type if standard else f"{node.domain}.{node.op_type}", []).append(node.name)
    for name, why in misconverted_nodes(model).items():
        missing.setdefault(why, []).append(name)
    return missing


def misconverted_nodes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name -> "Op (the case)" for the nodes TVM's frontend converts to something else:
    - a Resize whose `scales` do not give whole output sizes (16 x 0.6): TVM computes the
      coordinates from the rounded output size, ONNX from the scale (129-154 LSB off, measured);
    - a LayerNormalization whose Mean or InvStdDev output is used: TVM returns scalars there;
    - a Pow whose base and exponent differ in type, or are integers: TVM's power takes two
      floats of one type (a type error, or a failed check)."""
    found = {}
    inferred = onnx.shape_inference.infer_shapes(model).graph \
        if any(n.op_type in ("Pow", "Resize", "Upsample") for n in model.graph.node) else onnx.GraphProto()
    tensors = [*inferred.input, *inferred.value_info, *inferred.output]
    types = {v.name: v.type.tensor_type.elem_type for v in tensors} | {i.name: i.data_type for i in model.graph.initializer}
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in tensors}
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "LayerNormalization" and any(name in used for name in node.output[1:]):
            found[node.name] = "LayerNormalization (its Mean or InvStdDev output read)"
        if node.op_type == "Pow":
            base, exponent = (types.get(name) for name in node.input[:2])
            floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)
            if None not in (base, exponent) and (base != exponent or base not in floats):
                found[node.name] = "Pow (an integer base or exponent, or two types)"
    resizes = [n for n in model.graph.node if n.op_type in ("Resize", "Upsample")]
    if resizes:
        constants = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in resizes:
            scale_input = 1 if node.op_type == "Upsample" else 2
            scales = constants.get(node.input[scale_input]) if len(node.input) > scale_input else None
            shape = shapes.get(node.input[0])
            if scales is not None and scales.size and shape and len(shape) == scales.size and all(shape):
                exact = [float(d) * float(s) for d, s in zip(shape, scales.astype(np.float64))]
                if any(abs(e - round(e)) > 1e-6 for e in exact):
                    found[node.name] = f"{node.op_type} (scales that do not give whole output sizes)"
    return found


def check_ops(model: onnx.ModelProto, name: str = "model") -> None:
    """Every op the frontend cannot convert, listed at once (exit 4)."""
    missing = unconvertible_ops(model)
    if missing:
        raise UnsupportedModelError(f"{name}: the TVM backend cannot lower {len(missing)} op type(s): "
                                    f"{', '.join(sorted(missing))}; replace them or keep this model on onnxruntime")


@dataclass
class Lowered:
    """The QDQ model imported and rewritten to integer: the one decision on what runs in
    integer (`build` compiles `mod`, `inspect` prints the counts)."""

    mod: object                 # the integer Relax module
    lowered: Counter            # integer ops by kind
    float_ops: Counter          # ops left in float, by name
    records: dict               # tag -> requantization.LayerRequantization, for kernel selection


def lower(qdq: onnx.ModelProto, batch: int = 1) -> Lowered:
    """Lookup tables (on the ONNX model), import, then the integer rewrite as the TVM module
    pass `qcompiler.integer-rewrite` (under the current PassContext)."""
    from qcompiler.backends.tvm.importer import import_qdq
    from qcompiler.backends.tvm.index_wraps import clip_takes, drop_index_wraps
    from qcompiler.backends.tvm.integer_rewrite import lower_to_integer
    from qcompiler.backends.tvm.lookup_tables import tabulate

    qdq, tables = tabulate(qdq)
    lowered: Counter = Counter()
    records: dict = {}

    def rewrite(mod, _ctx):
        mod, counts, found = lower_to_integer(clip_takes(drop_index_wraps(mod)))
        lowered.update(counts)
        records.update(found)
        return mod

    mod = tvm.transform.module_pass(rewrite, opt_level=0, name="qcompiler.integer-rewrite")(import_qdq(qdq, batch))
    if tables:
        lowered["lookup_table"] += tables
    return Lowered(mod, lowered, float_compute_ops(mod), records)


def build(qdq: onnx.ModelProto, target: str | TargetSpec, batch: int = 1, name: str = "model",
          allow_float: bool = False) -> Library:
    """Import, rewrite to integer and compile for the target (not yet written to disk). A
    target with a C driver (Hexagon) refuses float code unless `allow_float`."""
    spec = target if isinstance(target, TargetSpec) else get_target(target)
    if batch < 1:
        raise UsageError(f"batch must be at least 1, got {batch}")
    check_ops(qdq, name)
    _check_compiler(spec)
    seconds = {}
    timer = _StageTimer()
    current = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(opt_level=current.opt_level, config=dict(current.config), instruments=[timer]):
        start = time.perf_counter()
        integer = lower(qdq, batch)
        seconds["import and integer rewrite"] = time.perf_counter() - start
        start = time.perf_counter()
        target_obj = tvm_target(spec)
        mod, kernels, weight_bytes = schedule(integer, spec, target_obj)
        seconds["schedules"] = time.perf_counter() - start
    outputs = output_types(integer.mod)
    stages = timer.seconds
    start = time.perf_counter()
    executable = _compile_for_driver(mod, target_obj, spec, integer, allow_float) if spec.driver == "c" \
        else _compile(mod, target_obj)
    seconds["codegen"] = time.perf_counter() - start
    return Library(executable, spec, integer.lowered, integer.float_ops, batch, outputs, seconds, kernels, stages,
                   weight_bytes=weight_bytes)


def _compile(mod, target):
    """tvm.compile without the kernels' argument checks: they were two thirds of the code
    (MobileNetV2: 317 -> 94 KiB), one check and error message per dimension of every
    argument. Only the VM calls the kernels, with the tensors it planned itself, and it still
    checks the model's inputs (check_tensor_info)."""

    current = tvm.transform.PassContext.current()
    config = {**dict(current.config), "tirx.disable_assert": True}
    with tvm.transform.PassContext(opt_level=current.opt_level, config=config):
        return tvm.compile(mod, target=target)


def _compile_for_driver(mod, target, spec: TargetSpec, integer: Lowered, allow_float: bool):
    """The kernels and the C driver's plan (Hexagon): hexagon.HexagonBuild."""
    from qcompiler.backends.tvm.hexagon import build_hexagon, refuse_float

    refuse_float(integer.float_ops, spec, allow_float)
    with tempfile.TemporaryDirectory(prefix="qc-hexagon-") as work:
        return build_hexagon(mod, target, spec, Path(work))


def schedule(integer: Lowered, spec: TargetSpec, target) -> tuple[object, Counter, int]:
    """The backend's named stages after the integer rewrite, as TVM module passes (under the
    current PassContext, which `build` times): NHWC layout, the target's kernels (the
    depthwise and residual add kernels on every target, its preferred dot-product kernel where
    it has one, each with the rewrite's requantization record), then the generic CPU rules for
    everything else. Returns the module, the kernels used and the weights' bytes as stored."""

    from qcompiler.backends.tvm.apply_schedules import use_dot_kernels
    from qcompiler.backends.tvm.layout import to_nhwc
    from qcompiler.backends.tvm.schedules.cpu_generic import apply_cpu_rules

    kernels: Counter = Counter()
    weight_bytes = []

    def dot_kernels(mod, _ctx):
        mod, used, stored = use_dot_kernels(mod, spec.dot_kernel, integer.records)
        kernels.update(used)
        weight_bytes.append(stored)
        return mod

    stages = tvm.transform.Sequential([
        tvm.transform.module_pass(lambda mod, _ctx: to_nhwc(mod), opt_level=0, name="qcompiler.nhwc-layout"),
        tvm.transform.module_pass(dot_kernels, opt_level=0, name="qcompiler.dot-kernels"),
        tvm.transform.module_pass(lambda mod, _ctx: apply_cpu_rules(mod, target, spec.vector_lanes), opt_level=0,
                                  name="qcompiler.cpu-rules")], name="qcompiler.schedule")
    mod = stages(integer.mod)
    return mod, kernels, sum(weight_bytes)


@tvm.instrument.pass_instrument
class _StageTimer:
    """Seconds of each of our named backend passes (qcompiler.*), in run order."""

    def __init__(self):
        self.seconds, self._start = {}, {}

    def run_before_pass(self, mod, info):
        if info.name.startswith("qcompiler.") and info.name != "qcompiler.schedule":
            self._start[info.name] = time.perf_counter()

    def run_after_pass(self, mod, info):
        if info.name in self._start:
            self.seconds[info.name] = time.perf_counter() - self._start.pop(info.name)


def output_types(mod) -> list[tuple[list[int], str]]:
    """Shape and dtype of each value `main` returns (one tensor or a tuple of them)."""
    ty = mod["main"].ret_ty
    fields = ty.fields if hasattr(ty, "fields") else [ty]
    return [([int(d) for d in t.shape], str(t.dtype)) for t in fields]


def float_compute_ops(mod) -> Counter:
    """Ops left computing in float (the fallback), by name; the Q/DQ at the edges excluded."""
    from tvm import relax

    counts: Counter = Counter()
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value, ty = binding.value, binding.var.ty
            if isinstance(value, relax.Call) and getattr(ty, "dtype", "") == "float32":
                op = value.op.name if hasattr(value.op, "name") else "call"
                if op not in ("relax.dequantize",):
                    counts[op.replace("relax.", "")] += 1
    return counts


# -s: no debug information or static symbol table in a deployable library (the dynamic symbols
# the runtime looks up stay; 12% of MobileNetV2's library). -z noseparate-code: code and
# read-only data share pages, without the page of padding around the code (4 KiB).
LINK_OPTIONS = ["-s", "-Wl,-z,noseparate-code"]


def export(library: Library, path: Path) -> Path:
    """Write the shared library atomically (a temporary name in the same folder, then rename)."""
    from tvm.support import cc

    spec = library.target
    _check_compiler(spec)
    fcompile = _without_unwind_tables(cc.cross_compiler(spec.cross_compiler) if spec.cross_compiler
                                      else cc.create_shared, spec)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".so", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write: {exc.strerror}") from None
    try:
        try:
            library.executable.export_library(tmp, fcompile=fcompile, options=LINK_OPTIONS)
        except (RuntimeError, subprocess.CalledProcessError) as exc:   # the linker or objcopy failed: one line
            detail = next((line for line in str(exc).splitlines() if "error" in line.lower()), str(exc)[:200])
            raise OutputError(f"{path}: linking the library for {spec.name} failed: {detail.strip()}"
                              + (f" (is {spec.apt_package} complete? scripts/setup_aarch64.sh installs it)"
                                 if spec.apt_package else "")) from None
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _without_unwind_tables(link, spec: TargetSpec):
    """`link` (TVM's fcompile) after removing the unwind tables (.eh_frame) from the objects:
    no exception crosses the generated code (kernels return error codes to TVM's C API), so
    they only serve debuggers and profilers; 8 KiB of MobileNetV2's library. Skipped when the
    target's objcopy is missing."""
    objcopy = spec.cross_compiler.removesuffix("gcc") + "objcopy" if spec.cross_compiler else "objcopy"

    def strip_and_link(output, objects, options=None, **kwargs):
        if shutil.which(objcopy):
            for obj in objects:
                if obj.endswith(".o"):
                    subprocess.run([objcopy, "--remove-section=.eh_frame", "--remove-section=.rela.eh_frame", obj],
                                   check=True, capture_output=True)
        return link(output, objects, options=options, **kwargs)

    strip_and_link.output_format = "so"
    return strip_and_link


def _check_compiler(spec: TargetSpec) -> None:
    if not spec.compiler_available():
        raise UsageError(f"target {spec.name} needs the cross compiler {spec.cross_compiler}, which is not on "
                         f"PATH; install it with `apt-get install {spec.apt_package}`")


def quant_parameters(qdq: onnx.ModelProto) -> list[dict]:
    """Every QuantizeLinear's tensor, scale, zero point and dtype (activations, per tensor)."""
    inits = {i.name: i for i in qdq.graph.initializer}
    found = []
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[1] not in inits:
            continue
        scale = numpy_helper.to_array(inits[node.input[1]])
        zp = numpy_helper.to_array(inits[node.input[2]]) if len(node.input) > 2 and node.input[2] in inits else None
        found.append({"tensor": node.input[0], "scale": scale.astype(float).tolist(),
                      "zero_point": None if zp is None else zp.astype(int).tolist(),
                      "dtype": "uint8" if zp is None else str(zp.dtype)})
    return found


def metadata(qdq: onnx.ModelProto, library: Library, version: str) -> dict:

    inputs, outputs = io_signature(qdq, library)
    return {
        "format": "qcompiler-library/1",
        "qcompiler_version": version,
        "tvm_version": tvm.__version__,
        "target": {"name": library.target.name, "tvm": json.loads(str(tvm_target(library.target))),
                   "dot_kernels": list(library.target.dot_kernels), "runner": library.target.runner,
                   "cpu_flags": list(library.target.cpu_flags), "vector_lanes": library.target.vector_lanes},
        "kernels": dict(library.kernels),
        "tuned_kernels": sorted(library.tuned_kernels),
        "weight_bytes": library.weight_bytes,
        "batch": library.batch,
        "inputs": inputs,
        "outputs": outputs,
        "integer_ops": dict(library.lowered),
        "float_fallback_ops": dict(library.float_ops),
        "quantization": quant_parameters(qdq),
    }


def io_signature(qdq: onnx.ModelProto, library: Library) -> tuple[dict, dict]:
    """Inputs and outputs with dtypes and static shapes, in order."""
    from qcompiler.backends.tvm.importer import input_shapes

    shapes = input_shapes(qdq, library.batch)
    inputs = {value.name: {"dtype": _dtype(value), "shape": shapes[value.name]}
              for value in qdq.graph.input if value.name in shapes}
    outputs = {value.name: {"dtype": dtype, "shape": shape}
               for value, (shape, dtype) in zip(qdq.graph.output, library.outputs)}
    return inputs, outputs


def _dtype(value) -> str:
    return str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)))
