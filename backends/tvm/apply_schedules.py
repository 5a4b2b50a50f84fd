"""Kernel selection for the integer module in NHWC (layout.py puts it there): the pass
qcompiler.dot-kernels of the default build (no search).

`use_dot_kernels`: where the CPU has a dot-product instruction, every u8 x s8 -> s32 conv2d
(groups 1) and matmul with a constant weight becomes a call of the scheduled VNNI, sdot or
smmla kernel (schedules/int8_conv.py, arm_smmla.py), with the requantization that follows
computed inside it: its numbers come from the integer rewrite's record of the layer
(requantization.py), found by the names the rewrite gave its accumulator and output, never
read back from the ops in between. Input channels are zero-padded to a multiple of 4 (smmla:
8) and output channels to a multiple of 16 (VNNI: of 8, with 8-lane blocks; zero weights,
then a slice), so every such layer qualifies. On every target, depthwise convolutions with
16k channels and a requantization use their own kernel (schedules/depthwise.py), residual
adds theirs (schedules/residual_add.py); other grouped convolutions keep TVM's compute with
HWIO weights, unless `block_diagonal_applies`: then their weight is made dense and
block-diagonal and they run on the dot-product kernel like any conv. The rest and the remaining
elementwise ops are scheduled by the generic CPU rules (schedules/cpu_generic.py).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import tvm
from tvm import relax

from qcompiler.backends.tvm.fixed_point import RESIDUAL_INT32_SHIFTS
from qcompiler.backends.tvm.qdq_patterns import Bindings, op_name
from qcompiler.backends.tvm.requantization import var_name
from qcompiler.backends.tvm.schedules import arm_smmla, depthwise, geometry, int8_conv, packing, requantize, residual_add

#: Ops whose input 1 is a layer's weight.
WEIGHTED_OPS = ("relax.nn.conv2d", "relax.matmul", "relax.nn.conv2d_transpose", "relax.nn.conv1d")


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _term_source(uses: Bindings, v_product) -> tuple | None:
    """(x, axes) of one side of a residual add: the integer tensor the rewrite centred and
    scaled (astype(astype(x, int32) [- zp], int64) * m; the numbers are in the add's record),
    and the permutation ConvertLayout put after it, if any (it moves a side that stays NCHW, the
    network's input, to NHWC on int64; the kernel's caller transposes x itself instead)."""
    product, axes = uses.values.get(v_product), None
    if op_name(product) == "relax.permute_dims":
        axes, v_product = [int(a) for a in product.attrs.axes], product.args[0]
        product = uses.values.get(v_product)
    wide = uses.values.get(product.args[0]) if op_name(product) == "relax.multiply" else None
    if op_name(wide) != "relax.astype":
        return None
    inner = uses.values.get(wide.args[0])
    if op_name(inner) == "relax.subtract":
        inner = uses.values.get(inner.args[0])
    if op_name(inner) != "relax.astype" or str(inner.attrs.dtype) != "int32":
        return None
    return inner.args[0], axes


def kernel_kind(isa: str | None, on_4bit_grid: bool, ci: int, wo: int, fused: bool) -> str | None:
    """Which kernel a conv or matmul gets on a target whose dot-product kernel is `isa`: the
    target's; smmla falls back to sdot where it cannot apply (4-bit weights, odd output widths),
    avx2 takes weights on the 4-bit grid on the faster avx2ub;
    sdot and smmla need the fused correction (`fused`: a requantization follows); None: TVM's
    generic code."""
    if isa is None:
        return None
    if isa == "avx2" and on_4bit_grid:   # |w| <= 8: vpmaddubsw's int16 pair sums cannot saturate
        return "avx2ub"
    if isa in int8_conv.UNSIGNED_ACTIVATIONS:
        return isa
    if not fused:
        return None
    if isa == "smmla" and not on_4bit_grid and arm_smmla.applies(_round_up(ci, 8), 16, wo):
        return "smmla"
    return "sdot"


def weight_layout(kind: str, ci: int, co: int, pixels: int) -> tuple[str, int, int]:
    """(kernel isa, padded input channels, padded output channels) of a conv on `kind`. 8-lane
    blocks where the weights outweigh the pixels (the classifier, batch <= 16: its padding to
    16 was 10 KiB); over many pixels each block re-broadcasts the activations: 3 blocks of 8 for
    24 channels cost MobileNetV2 95 us more than 2 blocks of 16 and a slice."""
    narrow = {"vnni": "vnni8", "avx2": "avx2_8"}   # 8-channel forms
    isa = narrow[kind] if kind in narrow and co % 16 and pixels <= 16 else kind
    return isa, _round_up(ci, 8 if kind == "smmla" else 4), _round_up(co, int8_conv.channel_block(isa))


def packed_bits(kind: str, on_4bit_grid: bool, fits_int2: bool) -> int:
    """Bits per stored weight: 4-bit grids two to a byte, four where each channel spans at most
    4 values (smmla and avx2, whose weights are off the 4-bit grid, have no packed form)."""
    return 8 if kind in ("smmla", "avx2") or not on_4bit_grid else 2 if fits_int2 else 4


def packed_weights(weight: np.ndarray, isa: str, bits: int) -> list[np.ndarray]:
    """The weight's kernel inputs in the kernel's layout: 4-bit two to a byte, 2-bit four to
    a byte and their per-channel offsets."""
    if isa == "smmla":
        return [arm_smmla.pack_weight(weight)]
    block = int8_conv.channel_block(isa)
    if bits == 2:
        return list(packing.pack_weight_int2(weight, block))
    if bits == 4:
        return [packing.pack_weight_int4(weight, block)]
    if isa in int8_conv.PAIRED_WEIGHTS:
        return [packing.pack_weight_pairs(weight, block)]
    return [packing.pack_weight(weight, block)]


@relax.expr_functor.mutator
class _DotKernels(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, isa: str | None, records: dict):
        super().__init__(mod)
        self.isa = isa
        self.used: Counter = Counter()
        #: bytes of the layers' weights as the library stores them (packed where a kernel packs them)
        self.weight_bytes = 0
        self.uses = Bindings(mod["main"])
        self.records = {record.acc_name: record for record in records.values()}   # by accumulator name
        self.by_name = {var_name(var): var for var in self.uses.values}
        self.current = None           # the var whose binding is being visited
        self.replaced: dict = {}      # final var of a fused requantization -> the fused kernel's output

    def _requantization(self, acc) -> tuple | None:
        """(output var, correction, multiplier, Requantize) of the layer whose accumulator is
        `acc`, from the integer rewrite's record; None when it has none, or when its output no
        longer has the accumulator's shape (a layout change between them: nothing to fuse)."""
        record = self.records.get(var_name(acc)) if acc is not None else None
        final = self.by_name.get(record.out_name) if record is not None else None
        if final is None or [int(d) for d in final.ty.shape] != [int(d) for d in acc.ty.shape]:
            return None
        return final, record.correction, record.multipliers[0], record.requantize

    def visit_var_binding_(self, binding) -> None:
        if binding.var in self.replaced:
            self.set_var_remap(binding.var, self.replaced[binding.var])
            return
        self.current = binding.var
        super().visit_var_binding_(binding)

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        name = op_name(call)
        if name == "relax.nn.conv2d":
            lowered = self._conv2d(call)
        elif name == "relax.matmul":
            lowered = self._matmul(call)
        elif name == "relax.add":
            lowered = self._residual_add(call)
        else:
            lowered = None
        if lowered is None:
            self._count_unpacked(call)
        return lowered if lowered is not None else super().visit_call_(call)

    def _count_unpacked(self, call: relax.Call) -> None:
        """A weighted op left to TVM's generic code keeps its constant weight as it is."""
        if op_name(call) in WEIGHTED_OPS and len(call.args) > 1 and isinstance(call.args[1], tvm.ir.expr.Constant):
            self.weight_bytes += call.args[1].value.numpy().nbytes

    def _qualifies(self, call: relax.Call) -> np.ndarray | None:
        data, weight = call.args
        if not isinstance(weight, tvm.ir.expr.Constant) or str(call.ty.dtype) != "int32":
            return None
        if str(data.ty.dtype) != "uint8" or str(weight.ty.dtype) != "int8":
            return None
        return weight.value.numpy()

    def _conv2d(self, call: relax.Call):
        attrs = call.attrs
        weight = self._qualifies(call)
        if (weight is None or attrs.data_layout != "NHWC" or attrs.kernel_layout != "OHWI"
                or attrs.out_layout != "NHWC"):
            return None
        if int(attrs.groups) != 1:
            fused = self._depthwise(call, weight)
            if fused is not None:
                return fused
            if self.isa is None or not block_diagonal_applies(int(attrs.groups), weight.shape[3]):
                return self._grouped_hwio(call, weight)
        if self.isa is None:   # no dot-product kernel on this target: nothing to prepare
            return None
        data, padding, pad_value = self._unpadded(call.args[0], tuple(int(p) for p in attrs.padding))
        dense = weight if int(attrs.groups) == 1 else block_diagonal(weight, int(attrs.groups))
        out, fused = self._emit(data, dense, tuple(int(s) for s in attrs.strides),
                                tuple(int(d) for d in attrs.dilation), padding, self.current, pad_value)
        if out is None and int(attrs.groups) != 1:   # no kernel after all (sdot with no requantization)
            return self._grouped_hwio(call, weight)
        if out is None or fused is None:
            return out
        self.replaced[fused] = out
        return super().visit_call_(call)

    def _unpadded(self, data: relax.Expr, padding: tuple) -> tuple:
        """(input, padding, pad value) for a kernel. An input the rewrite padded with its zero
        point (its record says how; the network's first conv), then transposed to NHWC by the
        layout pass, is passed unpadded and the kernel pads it, so that the transpose writes
        whole rows (224 pixels, not 226: no masked tail) and no padded copy is made."""
        record = self.records.get(var_name(self.current))
        transpose = self.uses.values.get(data)
        if (record is None or record.input_padding is None or op_name(transpose) != "relax.permute_dims"
                or [int(a) for a in transpose.attrs.axes] != [0, 2, 3, 1]
                or var_name(transpose.args[0]) != record.pad_name):
            return self.visit_expr(data), padding, 0
        source = self.uses.values[transpose.args[0]].args[0]   # what the rewrite padded
        unpadded = self.builder_.emit(relax.op.permute_dims(self.visit_expr(source), [0, 2, 3, 1]))
        return unpadded, tuple(p + q for p, q in zip(padding, record.input_padding)), record.pad_value

    def _depthwise(self, call: relax.Call, weight: np.ndarray) -> relax.Expr | None:
        """A depthwise convolution (one input channel per group) and its requantization on the
        dedicated kernel; None when it has no fusable requantization or an odd channel count."""
        attrs = call.attrs
        n, h, w, c = (int(d) for d in call.args[0].ty.shape)
        chain = self._requantization(self.current)
        if int(attrs.groups) != c or weight.shape[0] != c or weight.shape[3] != 1 or chain is None \
                or not depthwise.applies(c):
            return None
        final, corr, multiplier, rq = chain
        _, kh, kw, _ = weight.shape
        int4 = _on_4bit_grid(weight)
        kernel = depthwise.depthwise_kernel(n, h, w, c, kh, kw, tuple(int(s) for s in attrs.strides),
                                            tuple(int(d) for d in attrs.dilation),
                                            tuple(int(p) for p in attrs.padding), rq.code_for(weight, corr, 255), int4,
                                            parallel=self.isa not in int8_conv.SINGLE_THREADED,
                                            sixteen_registers=self.isa in int8_conv.SIXTEEN_REGISTERS,
                                            vnni=self.isa == "vnni")
        gvar = self.builder_.add_func(kernel, kernel.attrs["global_symbol"])
        hwc = np.ascontiguousarray(weight[..., 0].transpose(1, 2, 0))
        stored = depthwise.pack_weight_int4(hwc) if int4 else hwc
        self.weight_bytes += stored.nbytes
        packed = relax.const(stored, str(stored.dtype))
        args = [self.visit_expr(call.args[0]), packed,
                relax.const(requantize.requantize_table(corr, multiplier, rq, c, c), "int32")]
        self.replaced[final] = self.builder_.emit(relax.op.call_tir(
            gvar, relax.Tuple(args), relax.TensorType([int(call.ty.shape[i]) for i in range(3)] + [c], rq.dtype)))
        self.used["depthwise conv2d" + (" int4" if int4 else "") + " + requantize"] += 1
        return super().visit_call_(call)

    def _residual_add(self, call: relax.Call) -> relax.Expr | None:
        """A residual add (two requantized sides, one rounding) on the shared kernel."""
        record = self.records.get(var_name(self.current))
        final = self.by_name.get(record.out_name) if record is not None else None
        terms = [_term_source(self.uses, arg) for arg in call.args]
        if final is None or any(t is None for t in terms) or call.ty.shape is None:
            return None
        rq, (za, zb) = record.requantize, record.zero_points
        ma, mb = (int(np.asarray(m).reshape(())) for m in record.multipliers)
        shape = tuple(int(d) for d in call.ty.shape)
        if not (0 < ma < 2 ** 31 and 0 < mb < 2 ** 31) or tuple(int(d) for d in final.ty.shape) != shape:
            return None   # the kernel multiplies in int32; the output kept the sum's layout
        for x, axes in terms:   # no broadcasting: both sides have the output's shape
            dims = [int(d) for d in x.ty.shape]
            if tuple(dims if axes is None else [dims[a] for a in axes]) != shape:
                return None
        sides = []
        for x, axes in terms:
            x = self.visit_expr(x)
            sides.append(x if axes is None else self.builder_.emit(relax.op.permute_dims(x, axes)))
        dtypes = [str(side.ty.dtype) for side in sides]
        int32 = all(d in ("uint8", "int8") for d in dtypes) and rq.shift in RESIDUAL_INT32_SHIFTS
        kernel = residual_add.residual_add_kernel(shape, *dtypes, requantize.RequantizeCode(rq.dtype, rq.ties, int32))
        gvar = self.builder_.add_func(kernel, kernel.attrs["global_symbol"])
        table = relax.const(residual_add.residual_table((za, zb), (ma, mb), rq), "int32")
        self.replaced[final] = self.builder_.emit(relax.op.call_tir(
            gvar, relax.Tuple([*sides, table]), relax.TensorType(list(shape), rq.dtype)))
        self.used["residual add"] += 1
        return super().visit_call_(call)

    def _grouped_hwio(self, call: relax.Call, weight: np.ndarray) -> relax.Expr:
        """Grouped (depthwise) convolutions keep TVM's compute but take HWIO weights, so that
        the vectorized channel loop reads weights contiguously (OHWI strides them by KH*KW)."""
        attrs = call.attrs
        self.used["depthwise/grouped conv2d, HWIO weights"] += 1
        self.weight_bytes += weight.nbytes
        return relax.op.nn.conv2d(
            self.visit_expr(call.args[0]), relax.const(np.ascontiguousarray(weight.transpose(1, 2, 3, 0)), "int8"),
            strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation, groups=int(attrs.groups),
            data_layout="NHWC", kernel_layout="HWIO", out_dtype="int32")

    def _matmul(self, call: relax.Call):
        weight = self._qualifies(call)
        data = call.args[0]
        if weight is None or weight.ndim != 2 or len(data.ty.shape) != 2 or self.isa is None:
            return None
        rows, depth = (int(d) for d in data.ty.shape)
        image = self.builder_.emit(relax.op.reshape(self.visit_expr(data), [1, 1, rows, depth]))
        acc_var = self.current
        out, fused = self._emit(image, weight.T.reshape(weight.shape[1], 1, 1, depth), (1, 1), (1, 1),
                                (0, 0, 0, 0), acc_var)
        if out is None:
            self._count_unpacked(call)
            return super().visit_call_(call)
        out = self.builder_.emit(relax.op.reshape(out, [rows, weight.shape[1]]))
        if fused is None:
            return out
        self.replaced[fused] = out
        return super().visit_call_(call)

    def _emit(self, data: relax.Expr, weight: np.ndarray, stride, dilation, padding, acc_var,
              pad_value: int = 0) -> relax.Expr:
        """The kernel call, and the var of the requantization chain after `acc_var` that it
        computes when that chain could be fused in (else None). With a fused chain the caller
        maps that var to its output (self.replaced) and leaves the unfused ops to dead-code
        elimination. (None, None): no kernel applies, TVM's generic code stays."""
        n, h, w, ci = (int(d) for d in data.ty.shape)
        co, kh, kw, _ = weight.shape
        ho, wo = geometry.output_size(h, w, kh, kw, stride, dilation, padding)
        chain = self._requantization(acc_var)
        on_4bit_grid = _on_4bit_grid(weight)
        kind = kernel_kind(self.isa, on_4bit_grid, ci, wo, chain is not None)
        if kind is None:
            return None, None
        isa, ci_p, co_p = weight_layout(kind, ci, co, n * ho * wo)
        padded = np.zeros((co_p, kh, kw, ci_p), np.int8)
        padded[:co, :, :, :ci] = weight
        bits = packed_bits(kind, on_4bit_grid, packing.fits_int2(padded))
        packed = packed_weights(padded, isa, bits)
        args = [self._pad_channels(data, ci_p - ci), *(relax.const(p, str(p.dtype)) for p in packed)]
        rq, dtype, code = None, "int32", None
        if chain is not None:
            final, corr, multiplier, rq = chain
            if kind not in int8_conv.UNSIGNED_ACTIVATIONS:   # sdot/smmla compute with x - 128: add 128 * sum(w) back
                corr = np.broadcast_to(corr.reshape(-1), (co,)).astype(np.int64) \
                    + 128 * weight.astype(np.int64).sum(axis=(1, 2, 3))
                if np.abs(corr).max() >= 2 ** 31:
                    return None, None
            args.append(relax.const(requantize.requantize_table(corr, multiplier, rq, co, co_p), "int32"))
            dtype = rq.dtype
            code = rq.code_for(weight, corr, 255 if kind in int8_conv.UNSIGNED_ACTIVATIONS else 128)
        self.weight_bytes += sum(p.nbytes for p in packed)   # stored: no kernel declined it above
        if kind == "smmla":
            kernel = arm_smmla.conv2d_kernel(n, h, w, ci_p, co_p, kh, kw, stride, dilation, padding, code,
                                             pad_value)
        else:
            kernel = int8_conv.conv2d_kernel(n, h, w, ci_p, co_p, kh, kw, stride, dilation, padding,
                                             code, bits, isa, pad_value)
        gvar = self.builder_.add_func(kernel, kernel.attrs["global_symbol"])
        out = self.builder_.emit(relax.op.call_tir(gvar, relax.Tuple(args), relax.TensorType([n, ho, wo, co_p], dtype)))
        self.used[(f"{kind} conv2d" if kh * kw > 1 else f"{kind} 1x1 conv2d / matmul") + (f" int{bits}" if bits < 8 else "")
                  + (" + requantize" if rq else "")] += 1
        if co_p != co:
            out = self.builder_.emit(relax.op.strided_slice(out, axes=[3], begin=[0], end=[co]))
        return out, (None if chain is None else final)

    def _pad_channels(self, data: relax.Expr, extra: int) -> relax.Expr:
        """Extra zero input channels (they meet zero weights) up to the kernel's multiple."""
        if not extra:
            return data
        return self.builder_.emit(relax.op.nn.pad(data, [0, 0, 0, 0, 0, 0, 0, extra], pad_value=0.0))


def block_diagonal_applies(groups: int, channels_per_group: int) -> bool:
    """Whether a grouped convolution runs on the dense dot-product kernels with a block-diagonal
    weight: G times its multiply-adds, each about 25x faster than in TVM's generic grouped code
    where a group has 2 to 15 input channels (its vectors go unfilled), about 3x where it has
    more (benchmarks/results/grouped_conv_avx2.md: the rule picks the faster of the two in all
    16 cases there). Depthwise ones (one channel a group) stay: the generic code fills its
    vectors across the groups."""
    return channels_per_group > 1 and (groups <= 2 or (channels_per_group < 16 and groups <= 16))


def block_diagonal(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's OHWI weight [O, KH, KW, C/G] as the dense [O, KH, KW, C] one:
    output channel o reads only its group's input channels, zeros elsewhere (exact in integers)."""
    out, kh, kw, per_group = weight.shape
    dense = np.zeros((out, kh, kw, per_group * groups), weight.dtype)
    for g in range(groups):
        rows = slice(g * out // groups, (g + 1) * out // groups)
        dense[rows, :, :, g * per_group:(g + 1) * per_group] = weight[rows]
    return dense


def _on_4bit_grid(weight: np.ndarray) -> bool:
    """Whether int8 weights all lie in [-8, 7] (the 4- and 2-bit presets): stored packed, two
    to a byte (four where packing.fits_int2)."""
    return bool(weight.min() >= -8 and weight.max() <= 7)


def use_dot_kernels(mod: tvm.IRModule, isa: str | None, records: dict) -> tuple[tvm.IRModule, Counter, int]:
    """Convolutions and matmuls on the dot-product kernels of `isa` ("vnni", "sdot", "smmla";
    None: none), depthwise convolutions and residual adds on their own kernels, each with the
    requantization the integer rewrite recorded for it (`records`: tag -> LayerRequantization).
    Returns the module, the kernels used, and the bytes of the layers' weights as stored."""
    mutator = _DotKernels(mod, isa, records)
    main = mutator.visit_expr(mod["main"])
    mod = mutator.builder_.get()
    mod["main"] = main
    # Alias bindings (var = var) left by the rewrite would stop TVM from fusing across them.
    mod = relax.transform.CanonicalizeBindings()(relax.transform.DeadCodeElimination()(mod))
    return mod, mutator.used, mutator.weight_bytes
