"""The integer kernels of a scheduled module as one Hexagon object file (HVX code), without
`tvm.compile`, which fails for Hexagon in TVM 0.27.

What runs instead: the memory plan of Relax (`planned_main`, read by c_driver.py), then TVM's
default TIR pipeline and host finalization by hand over the module's PrimFuncs, then TVM's
Hexagon code generator. That generator ends by linking a shared object with the Hexagon SDK's
`hexagon-link` (through the global function `tvm.contrib.hexagon.link_shared`); we take the
object file it hands to that linker instead, so no SDK is needed: the object is linked with the
generated C driver by Debian's `ld.lld` (qemu_hexagon.py) or by the SDK's toolchain (the
Makefile the driver comes with).

Each kernel keeps TVM's packed calling convention (`__tvm_ffi_<name>(self, args, n, result)`,
arguments as DLTensor pointers), with every argument check removed (`tirx.disable_assert`): the
driver calls the kernels with the tensors it planned itself.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import tvm
from tvm import relax, tirx
from tvm_ffi.structural import structural_map

from qcompiler.errors import UnsupportedModelError

#: Relax's lowering up to the static memory plan: each call_tir becomes a call on planned
#: output tensors (alloc_storage + alloc_tensor at offsets), which the C driver writes out.
#: RewriteDataflowReshape is left out on purpose: a reshape stays a copy kernel, so that the
#: driver has only kernel calls to make.
PLAN_PASSES = ("ToNonDataflow", "RemovePurityChecking", "CallTIRRewrite", "StaticPlanBlockMemory")


def planned_main(mod: tvm.IRModule) -> tvm.IRModule:
    """The scheduled module after Relax's memory planning (see PLAN_PASSES)."""
    return tvm.transform.Sequential([getattr(relax.transform, name)() for name in PLAN_PASSES])(mod)


def kernel_functions(mod: tvm.IRModule) -> tvm.IRModule:
    """The module's PrimFuncs, each exported under its own name."""
    funcs = {gv.name_hint: f for gv, f in mod.functions.items() if isinstance(f, tirx.PrimFunc)}
    return tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})


def scalar_kernels(kernels: tvm.IRModule, names) -> tvm.IRModule:
    """The kernels `names` with their vector loops made serial. c_driver.Plan.float_kernels
    gives the model's edges (quantize a float input, dequantize an output): vectorized, the
    NHWC -> NCHW dequantize of a 4-d output crashed under qemu (SIGSEGV, in the HVX code LLVM
    makes for float vectors, which HVX v68 has no IEEE instructions for); scalar, it is exact.
    Integer kernels keep their HVX code."""
    serial = tirx.transform.VectorizeLoop(False)
    return tvm.IRModule({gv.name_hint: serial(tvm.IRModule({gv.name_hint: f}))[gv.name_hint]
                         if gv.name_hint in names else f for gv, f in kernels.functions.items()})


#: LLVM options for every kernel object. LLVM's Hexagon packetizer may put a store in slot 1
#: and a load in slot 0 of one packet, even when both touch the same address: from v65 on,
#: the store happens first and the load sees its data (the Programmer's Reference Manual's
#: "mem_noshuf" rule, section 5.5 for v67). LLVM uses that to spill a value and reload it
#: from the same stack slot in one packet. qemu-hexagon 7.2 (Debian 12's), which checks
#: every library, gets that wrong after an earlier packet has cancelled a predicated
#: instruction in slot 1 (it seems to keep the slot marked cancelled and skips the early
#: store): the load returns the old data. A 4-packet assembly test shows it. The packet
#: alone loads the stored value; after `{ if (p0) r12 = memw(..); if (p0) r13 = memw(..) }`
#: with p0 false it loads the old one. The kernels' unaligned HVX loads predicate their
#: second vector load (`if (p0) v5 = vmem(...)`), cancelled whenever the address is aligned.
#: It showed in the 128 -> 256 1x1 convolution of lcnet_paddle's squeeze-excitation block
#: (global pool, then 1x1). Its int64 requantization of 32 lanes is scalarized and spilled,
#: and lane 8 of each block was stored and reloaded in one packet (`memd(r29+#384) = r1:0;
#: r5:4 = memd(r29+#384)`, seen in a qemu -singlestep -d cpu trace). Under qemu that lane got
#: the slot's older content, its own 64-bit product before the shift: output channels
#: 8, 40, ..., 232 were off by up to 127 LSB. By the manual the code was right on a DSP.
#: This option keeps such pairs out of one packet, so the code is right on both, and the
#: qemu check is reliable again. Cost on ResNet-8 (w8a8, v68): 7306 -> 7436 packets of code
#: (+1.8%). The vrmpy loops keep their packets per vrmpy, except the first layer's
#: (4.22 -> 4.25).
#: tests/backends/test_hexagon.py checks that no kernel packet has a store before a load.
LLVM_OPTIONS = ("-slot1-store-slot0-load=false",)


def with_llvm_options(target):
    """`target` with LLVM_OPTIONS added to its llvm-options."""
    config = dict(target.export())
    options = list(config.get("llvm-options", ()))
    config["llvm-options"] = options + [o for o in LLVM_OPTIONS if o not in options]
    return tvm.target.Target(config)


def build_object(mod: tvm.IRModule, target, out: Path, scalar=()) -> Path:
    """Compile the PrimFuncs of a (planned) module for a Hexagon target into the object file
    `out`; those named in `scalar` without vector code."""
    target = with_llvm_options(target)
    kernels = scalar_kernels(kernel_functions(mod), set(scalar))
    current = tvm.transform.PassContext.current()
    config = {**dict(current.config), "tirx.disable_assert": True}
    with tvm.transform.PassContext(opt_level=current.opt_level, config=config):
        bound = tirx.transform.BindTarget(target.with_host(target))(kernels)
        pipeline, host_passes, _ = tvm.tirx.get_tir_pipeline("default")
        lowered = aligned_workspaces(host_passes()(pipeline(bound)))
        with _captured_object(out):
            from tvm.tirx.build import codegen_build

            try:
                codegen_build(lowered, target)
            except tvm.error.InternalError as exc:
                intrinsic = re.search(r"intrinsic declaration.*?: (\S+)", str(exc))
                if intrinsic is None:
                    raise
                raise UnsupportedModelError(f"TVM's Hexagon code generator cannot compile {intrinsic.group(1)} "
                                            "(float code left in the model); quantize the op that needs it, or "
                                            "keep this model on a CPU target") from None
    return out


#: What the C runtime's workspace allocator returns (qc_runtime.c: 128-byte blocks).
WORKSPACE_ALIGNMENT = 128


def aligned_workspaces(mod: tvm.IRModule) -> tvm.IRModule:
    """Every buffer a kernel takes from TVMBackendAllocWorkspace marked 128-byte aligned.
    For Hexagon every allocation goes through the workspace (not the stack), and LLVM then
    knows nothing of its alignment: the 4 activation bytes of each vrmpy were loaded one byte
    at a time and shifted together (ResNet-8's 3x3 convolutions read a padded copy of the
    input). Marked, they are one word load."""
    alloc = tvm.ir.Op.get("tirx.TVMBackendAllocWorkspace")

    def workspace(stmt) -> bool:
        return isinstance(stmt, tirx.DeclBuffer) and isinstance(stmt.data, tvm.ir.Call) and stmt.data.op.same_as(alloc)

    def mark(stmt):
        if not any(workspace(s) for s in stmt.seq):
            return stmt
        seq = list(stmt.seq)
        for i in range(len(seq) - 1, -1, -1):   # each buffer's mark scopes what follows its declaration
            if workspace(seq[i]) and i + 1 < len(seq):
                rest = seq[i + 1] if i + 2 == len(seq) else tirx.SeqStmt(seq[i + 1:])
                seq = seq[:i + 1] + [tirx.AttrStmt(seq[i].buffer, "storage_alignment",
                                                    tvm.tirx.IntImm("int32", WORKSPACE_ALIGNMENT), rest)]
        return tirx.SeqStmt(seq)

    funcs = {gv: f.with_body(structural_map(f.body, [(tirx.SeqStmt, mark)]))
             if isinstance(f, tirx.PrimFunc) else f for gv, f in mod.functions.items()}
    return tvm.IRModule(funcs, attrs=mod.attrs)


class _captured_object:
    """Replaces `tvm.contrib.hexagon.link_shared` for the duration: copy the object the code
    generator wrote to `out` rather than linking it with the SDK."""

    NAME = "tvm.contrib.hexagon.link_shared"

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self):
        self.previous = tvm.get_global_func(self.NAME, allow_missing=True)
        tvm.register_global_func(self.NAME, self._keep, override=True)

    def __exit__(self, *exc):
        if self.previous is not None:
            tvm.register_global_func(self.NAME, self.previous, override=True)
        return False

    def _keep(self, so_name, objects, extra_args=None):
        paths = [str(o).strip('"') for o in objects]
        if len(paths) != 1:
            raise RuntimeError(f"the Hexagon code generator wrote {len(paths)} objects, expected one")
        shutil.copyfile(paths[0], self.out)
        Path(str(so_name).strip('"')).touch()   # the generator reads the "library" back
        return 0
