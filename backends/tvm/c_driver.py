"""A C driver for a planned integer module: the graph as a list of kernel calls over a static
memory plan, for targets without the TVM runtime (Hexagon).

`plan(mod)` reads Relax's `main` after memory planning (hexagon_codegen.planned_main): every
binding is a storage (a static byte array), a tensor in a storage at an offset, a kernel call
on tensors, or an alias. `driver_files(plan, ...)` writes it as C:

- `model.h`: the run function and the model's inputs and outputs (names, shapes, dtypes);
- `model.c`: the storages, one DLTensor per tensor, and one call per kernel, in graph order;
- `model_weights.bin` + `model_weights.S`: the constants, 128-byte aligned, included into
  read-only data by the assembler (`.incbin`), so that a 14 MB model is not 80 MB of C;
- `qc_runtime.c`: the few hooks the kernels call (workspace allocation, and the device-setting
  call TVM emits for non-CPU targets, which has nothing to do on the DSP).

The kernels are called as TVM compiles them: `__tvm_ffi_<name>(self, args, num_args, result)`
with each argument an FFI value holding a DLTensor pointer (type index 7).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import tvm

from qcompiler.errors import UnsupportedModelError

ALIGN = 128   # HVX vector size: storages and constants start on a vector
DL_CODES = {"int": 0, "uint": 1, "float": 2, "bool": 6}   # DLPack's type codes


@dataclass
class Tensor:
    name: str          # the C identifier of its DLTensor
    shape: list[int]
    dtype: str
    base: str          # C expression of its data: a storage, a constant, an input or an output pointer
    offset: int = 0


@dataclass
class Plan:
    storages: dict[str, int] = field(default_factory=dict)      # C name -> bytes
    tensors: dict[str, Tensor] = field(default_factory=dict)    # C name -> tensor
    calls: list[tuple[str, list[str]]] = field(default_factory=list)   # kernel, argument tensor names
    outputs_of: list[int] = field(default_factory=list)   # per call: how many trailing arguments it writes
    constants: list[tuple[str, np.ndarray]] = field(default_factory=list)
    inputs: list[Tensor] = field(default_factory=list)
    outputs: list[Tensor] = field(default_factory=list)

    def float_kernels(self) -> set[str]:
        """Kernels with a float argument (quantize a float input, dequantize an output)."""
        dtypes = {t.name: t.dtype for t in self.tensors.values()}
        return {kernel for kernel, args in self.calls if any("float" in dtypes[a] for a in args)}

    def weight_bytes(self) -> int:
        return sum(_aligned(array.nbytes) for _, array in self.constants)


def _aligned(nbytes: int) -> int:
    return -(-nbytes // ALIGN) * ALIGN


def plan(mod) -> Plan:
    """The static plan of `main` (a planned module): storages, tensors, kernel calls, I/O.
    Inputs are the caller's buffers `in0, in1, ...` and outputs `out0, out1, ...`, in order.
    Relax variables are told apart as objects: their names repeat (`lv` in several places)."""
    from tvm import relax

    main = mod["main"]
    result, planned = Plan(), _Planned()
    for k, param in enumerate(main.params):
        tensor = _tensor_of(param, f"t_in{k}", f"(void*)in{k}")
        planned.tensors[param] = result.tensors[tensor.name] = tensor
        result.inputs.append(tensor)
        planned.written.add(tensor.name)
    for block in main.body.blocks:
        for binding in block.bindings:
            _bind(result, planned, binding, relax)
    body = main.body.body
    # several outputs: a Tuple, or a var bound to one (planned as a list of its tensors)
    outputs = [planned.tensors.get(v) for v in body.fields] if hasattr(body, "fields") else planned.tensors.get(body)
    for k, tensor in enumerate(outputs if isinstance(outputs, list) else [outputs]):
        if tensor is None or not tensor.base.startswith("(void*)out") or tensor in result.outputs:
            raise UnsupportedModelError(f"the C driver cannot return output {k}: only tensors a kernel writes, "
                                        "each once (an input or a constant passed through to an output, or one "
                                        "tensor as two outputs, is not supported)")
        tensor.base = f"(void*)out{k}"
        result.outputs.append(tensor)
    return result


@dataclass
class _Planned:
    """Relax variable -> what the plan made of it."""

    tensors: dict = field(default_factory=dict)
    storages: dict = field(default_factory=dict)
    written: set = field(default_factory=set)   # C names of tensors with a value: inputs, constants, outputs of calls


def _bind(result: Plan, planned: _Planned, binding, relax) -> None:
    var, value = binding.var, binding.value
    if isinstance(value, relax.Var):   # an alias of a tensor already planned
        planned.tensors[var] = planned.tensors[value]
        return
    op = getattr(value.op, "name", None) if isinstance(value, relax.Call) else None
    if op == "relax.memory.alloc_storage":
        size, dtype = int(value.args[0].values[0]), str(value.args[3].value)
        name = planned.storages[var] = f"s{len(result.storages)}"
        result.storages[name] = size * np.dtype(dtype).itemsize
    elif op in ("relax.memory.alloc_tensor", "relax.builtin.alloc_tensor"):
        # builtin.alloc_tensor: a model output, the caller's buffer (numbered at the end)
        base, offset = (planned.storages[value.args[0]], int(value.args[1].value)) \
            if op == "relax.memory.alloc_tensor" else ("(void*)out", 0)
        tensor = _tensor_of(var, f"t{len(result.tensors)}", base, offset)
        planned.tensors[var] = result.tensors[tensor.name] = tensor
    elif isinstance(value, relax.Call) and isinstance(value.op, relax.GlobalVar):
        args = [_argument(result, planned, arg, relax) for arg in value.args]
        written = [a for a in args if a not in planned.written]   # CallTIRRewrite puts the outputs last
        if args[len(args) - len(written):] != written:
            raise UnsupportedModelError(f"the C driver cannot call {value.op.name_hint}: it writes an argument "
                                        "that is not last (an in-place kernel)")
        planned.written.update(args)
        result.calls.append((value.op.name_hint, args))
        result.outputs_of.append(len(written))
    elif isinstance(value, relax.Tuple):   # a multi-output kernel's outputs, taken apart below
        planned.tensors[var] = [planned.tensors.get(field) for field in value.fields]   # None: a constant
    elif isinstance(value, relax.TupleGetItem):
        planned.tensors[var] = planned.tensors[value.tuple_value][value.index]
    else:
        raise UnsupportedModelError(f"the C driver cannot run {op or type(value).__name__} (binding {var.name}): "
                                    "it runs kernel calls on planned tensors only")


def _argument(result: Plan, planned: _Planned, arg, relax) -> str:
    if isinstance(arg, relax.Var):
        return planned.tensors[arg].name
    if isinstance(arg, tvm.ir.expr.Constant):
        array = np.array(arg.value.numpy(), order="C")   # (ascontiguousarray makes a 0-d array 1-d)
        name, offset = f"t_const{len(result.constants)}", result.weight_bytes()
        result.constants.append((name, array))
        planned.written.add(name)
        result.tensors[name] = Tensor(name, list(array.shape), str(array.dtype), "qc_weights", offset)
        return name
    raise UnsupportedModelError(f"the C driver cannot pass a {type(arg).__name__} to a kernel")


def _tensor_of(var, name: str, base: str, offset: int = 0) -> Tensor:
    ty = var.ty
    return Tensor(name, [int(d) for d in ty.shape.values], str(ty.dtype), base, offset)


C_TYPES = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "uint16": "uint16_t",
           "int32": "int32_t", "uint32": "uint32_t", "int64": "int64_t", "bool": "uint8_t"}


def dl_dtype(dtype: str) -> str:
    """DLPack's type code and bits, as QC_TENSOR's two arguments."""
    kind = re.match(r"[a-z]+", dtype).group()
    return f"{DL_CODES[kind]}, {int(dtype[len(kind):] or 8)}"   # bool: stored in 8 bits


def _c_type(dtype: str) -> str:
    if dtype not in C_TYPES:
        raise UnsupportedModelError(f"the C driver has no C type for {dtype} tensors")
    return C_TYPES[dtype]


def _run_signature(plan: Plan, prefix: str) -> str:
    """`int <prefix>_run(const T* in0, ..., T* out0, ...)`, as the header declares and model.c defines it."""
    params = [f"{'const ' if kind == 'in' else ''}{_c_type(t.dtype)}* {kind}{k}"
              for kind, tensors in (("in", plan.inputs), ("out", plan.outputs)) for k, t in enumerate(tensors)]
    return f"int {prefix}_run({', '.join(params)})"


def header(plan: Plan, io: dict, prefix: str = "qc_model") -> str:
    """model.h: the run function and, per input and output, its name, shape and C type."""
    lines = [HEADER_TOP.format(prefix=prefix.upper())]
    for kind, tensors, names in (("in", plan.inputs, list(io["inputs"])), ("out", plan.outputs, list(io["outputs"]))):
        for k, (tensor, name) in enumerate(zip(tensors, names)):
            size = int(np.prod(tensor.shape, dtype=np.int64))
            lines.append(f"/* {kind}{k}: {name!r}, {tensor.dtype} [{', '.join(map(str, tensor.shape))}] */")
            lines.append(f"#define {prefix.upper()}_{kind.upper()}{k}_ELEMENTS {size}")
    lines.append("")
    lines.append("/* Runs the model once: 0 on success, else 1 + the index of the kernel that failed. */")
    lines.append(_run_signature(plan, prefix) + ";")
    lines.append(f"\n#endif  /* {prefix.upper()}_H */")
    return "\n".join(lines) + "\n"


HEADER_TOP = """/* Generated by qcompiler: the model's entry point for the C driver (model.c). */
#ifndef {prefix}_H
#define {prefix}_H

#include <stdint.h>
"""


def model_source(plan: Plan, description: str, prefix: str = "qc_model") -> str:
    """model.c: storages, tensors and the kernel calls in graph order."""
    out = [f"/* Generated by qcompiler: {description}.", " *",
           f" * {len(plan.calls)} kernel calls over {sum(plan.storages.values())} bytes of static activation memory",
           f" * ({len(plan.storages)} storages, reused by Relax's memory plan) and {plan.weight_bytes()} bytes of constants",
           " * (model_weights.bin, included by model_weights.S). Each call passes DLTensors to a kernel of",
           " * model_hvx.o in TVM's packed convention; nothing of the TVM runtime is needed. */",
           "#include <stdint.h>", '#include "qc_runtime.h"', f'#include "{prefix}.h"', "",
           "extern const uint8_t qc_weights[];   /* model_weights.S */", ""]
    out += [f"static uint8_t {name}[{size}] __attribute__((aligned({ALIGN})));" for name, size in plan.storages.items()]
    out.append("")
    for tensor in plan.tensors.values():
        dims = ", ".join(map(str, tensor.shape)) or "1"
        data = "0" if tensor.base.startswith("(void*)") else f"(void*)({tensor.base} + {tensor.offset})"
        out.append(f"static int64_t {tensor.name}_shape[] = {{{dims}}};")
        out.append(f"static qc_tensor {tensor.name} = QC_TENSOR({data}, {len(tensor.shape)}, "
                   f"{dl_dtype(tensor.dtype)}, {tensor.name}_shape);")
    out.append("")
    for kernel in dict.fromkeys(k for k, _ in plan.calls):
        out.append(f"QC_KERNEL({kernel});")
    out += ["", _run_signature(plan, prefix) + " {"]
    out += [f"  {t.name}.data = {t.base};" for t in (*plan.inputs, *plan.outputs)]
    for step, ((kernel, args), written) in enumerate(zip(plan.calls, plan.outputs_of)):
        shown = ", ".join(args)
        out.append(f"  {{ qc_any args[] = {{{', '.join(f'QC_ARG({a})' for a in args)}}};   /* {shown} */")
        out.append(f"    if (QC_CALL({kernel}, args)) return {step + 1};")
        out.append("    " + " ".join(f"QC_TRACE({step}, {a});" for a in args[len(args) - written:]) + " }")
    out += ["  return 0;", "}", ""]
    return "\n".join(out)


def weights(plan: Plan) -> bytes:
    """model_weights.bin: the constants in plan order, each padded to ALIGN bytes."""
    chunks = []
    for _, array in plan.constants:
        data = array.tobytes()
        chunks.append(data + bytes(_aligned(len(data)) - len(data)))
    return b"".join(chunks)


WEIGHTS_ASM = """/* Generated by qcompiler: the model's constants (model_weights.bin) as read-only data. */
    .section .rodata
    .p2align 7
    .globl qc_weights
    .type qc_weights, @object
qc_weights:
    .incbin "model_weights.bin"
    .size qc_weights, . - qc_weights
"""
