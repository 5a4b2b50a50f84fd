"""QDQ-to-integer rewrite of an imported Relax module.

Each `R.quantize(f(...), s_y, zp_y)` whose float computation f is one of

    conv2d / matmul of DQ(activation) and DQ(constant weight) [+ bias] [+ ReLU/Clip]
    conv2d_transpose (one group): a stride-1 conv onto stride x stride phase channels, then a
      depth-to-space and a crop of the 8-bit output (transposed_conv.py)
    DQ(a) + DQ(b) [+ ReLU/Clip]                                  (residual add)
    DQ(a) * DQ(b), broadcasting                                  (a squeeze-excitation gate)
    DQ(x) * s + t, constants per channel or scalar [+ ReLU/Clip]  (a BatchNorm left unfolded)
    max_pool2d, reshape, flatten, permute_dims, squeeze, expand_dims of DQ(x)
    concat of DQ(x_i);  mean over H, W of DQ(x) (GlobalAveragePool);  avg_pool2d of DQ(x)
    DQ(x) itself [+ ReLU/Clip]                                   (a pure requantization)

is replaced by integer arithmetic on the quantized inputs: u8/s8 x s8 products accumulated in
int32 (inputs padded with their zero point), the zero-point correction and the bias folded into
one int32 constant per channel, then requantization by an int64 fixed-point multiply, round
and shift, the output zero point, a clamp (ReLU/Clip bounds moved onto the output grid) and a
cast. Anything else is left as the frontend made it: float between its DQ and Q, which is
correct, only not integer. Dead float code is removed afterwards.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import numpy as np
import tvm
from tvm import relax

from qcompiler import ops
from qcompiler.backends.tvm.fixed_point import (accumulator_bound, multiplier_and_shift, quantize_bound,
                                                ties_possible)
from qcompiler.backends.tvm.qdq_patterns import QUANTIZE, Bindings, QTensor, op_name
from qcompiler.backends.tvm.requantization import LayerRequantization
from qcompiler.backends.tvm.schedules.requantize import Requantize
from qcompiler.backends.tvm.transposed_conv import PhaseConv, phase_conv

#: The Relax ops that move onto the integers unchanged (qcompiler.ops.PASS_THROUGH, the table
#: annotate-quant reads too).
PASS_THROUGH = tuple(op for op in ops.PASS_THROUGH.values() if op is not None)
DTYPE_RANGE = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535), "int16": (-32768, 32767)}


def _const(values, dtype: str) -> relax.Expr:
    return relax.const(np.asarray(values).astype(dtype), dtype)


def _channel_shape(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape) if values.size > 1 else values.reshape(())


@relax.expr_functor.mutator
class _IntegerRewriter(relax.PyExprMutator):
    def __init__(self, mod: tvm.IRModule, bindings: Bindings):
        super().__init__(mod)
        self.b = bindings
        self.lowered: Counter = Counter()
        #: tag -> LayerRequantization of each conv, matmul and residual add lowered (for kernel selection)
        self.records: dict[str, LayerRequantization] = {}
        self._pending: dict | None = None       # the record the current lowering started
        self._tags = 0
        self._fixed_point: tuple = ((), 0, True)   # multipliers, shift, ties of the last _scale_terms
        self._splits: dict = {}   # split call -> its integer split, emitted once
        self._after = None        # what the current lowering's 8-bit output still needs (depth-to-space)

    # -- the entry point: every quantize call --------------------------------------------
    def visit_call_(self, call: relax.Call) -> relax.Expr:
        if call.op.same_as(QUANTIZE):
            lowered = self._lower_quantize(call)
            if lowered is not None:
                return lowered
        return super().visit_call_(call)

    def _lower_quantize(self, call: relax.Call):
        scale, zero_point = self.b.constant(call.args[1]), self.b.constant(call.args[2])
        out_dtype = str(call.attrs.out_dtype)
        if scale is None or zero_point is None or scale.size != 1 or out_dtype not in DTYPE_RANGE:
            return None
        out = QTensor(call, float(scale.reshape(())), int(zero_point.reshape(())), out_dtype)
        core, lo, hi = self._peel_clamps(call.args[0])
        for lower in (self._linear, self._residual_add, self._product, self._channel_affine, self._pass_through,
                      self._split_item, self._concat, self._global_mean, self._avg_pool, self._requantize_only):
            self._pending, self._after = None, None
            integer = lower(core, out)
            if integer is not None:
                self.lowered[lower.__name__.lstrip("_")] += 1
                finished = self._finish(integer, out, lo, hi, self._pending)
                return finished if self._after is None else self._after(finished)
        return None

    def _tag(self) -> str:
        """A fresh name for the vars of one recorded layer (rq0, rq1, ...)."""
        self._tags += 1
        return f"rq{self._tags - 1}"

    def _peel_clamps(self, expr):
        """ReLU, Clip (the frontend's maximum/minimum with constant bounds) around the core."""
        lo, hi = -np.inf, np.inf
        while True:
            value = self.b.value(expr)
            if not isinstance(value, relax.Call):
                return expr, lo, hi
            name = op_name(value)
            if name == "relax.nn.relu":
                lo, expr = max(lo, 0.0), value.args[0]
                continue
            if name == "relax.call_tir":
                func, args = value.args[0].name_hint, value.args[1].fields
                bound = self.b.constant(args[1]) if len(args) == 2 else None
                if bound is not None and bound.size == 1 and func.startswith(("maximum", "minimum")):
                    if func.startswith("maximum"):
                        lo = max(lo, float(bound.reshape(())))
                    else:
                        hi = min(hi, float(bound.reshape(())))
                    expr = args[0]
                    continue
            return expr, lo, hi

    # -- lowerings: each returns an int64/int32 expression on the output grid, or None -----
    def _linear(self, core, out: QTensor):
        bias_expr = None
        add = self.b.call(core, "relax.add")
        if add is not None:
            for op, other in ((add.args[0], add.args[1]), (add.args[1], add.args[0])):
                if self._linear_parts(op) is not None:
                    core, bias_expr = op, other
                    break
            else:
                return None
        parts = self._linear_parts(core)
        if parts is None:
            return None
        kind, call, x, w, weight_axis = parts
        channels = w.values.shape[weight_axis]
        ndim = len(call.ty.shape)
        out_axis = 1 if kind == "conv2d" else ndim - 1
        bias = np.zeros(channels)
        if bias_expr is not None:
            # one per output channel: a conv2d_transpose's O, repeated over its 1x1 conv's (o, a, b)
            out_channels = int(call.ty.shape[out_axis])
            bias = self.b.float_bias(bias_expr, out_channels)
            if bias is None:
                return None
            bias = np.repeat(bias, channels // out_channels)
        w_scale = np.broadcast_to(w.scale, (channels,))
        acc_scale = x.scale * w_scale
        reduce_axes = tuple(a for a in range(w.values.ndim) if a != weight_axis)
        correction = np.rint(bias / acc_scale) - x.zero_point * w.values.sum(axis=reduce_axes)
        # |acc| <= max|x| * sum|w| + |correction| per channel. It must fit the int32 accumulator
        # (16-bit inputs with long reductions may not: those stay float); far below 2**31, it
        # lets the rounding skip the tie fix-up for more layers (fixed_point.ties_possible).
        bound = accumulator_bound(w.values, weight_axis, correction, max(abs(v) for v in DTYPE_RANGE[x.dtype]))
        if bound.max() >= 2 ** 31:
            return None
        tag = self._tag()
        corr = _channel_shape(correction, ndim, out_axis).astype("int32")
        self._pending = {"tag": tag, "correction": corr}
        if kind == "conv2d":
            acc = self._int_conv2d(call, x, w, tag)
        else:
            acc = self._int_matmul(x, w, f"{tag}_acc")
        acc = self.builder_.emit(relax.op.add(acc, _const(corr, "int32")))
        return self._scale_terms([(acc, _channel_shape(acc_scale / out.scale, ndim, out_axis))], out, bound)

    def _linear_parts(self, expr):
        conv = self.b.call(expr, "relax.nn.conv2d")
        if conv is not None:
            attrs = conv.attrs
            x, w = self.b.qtensor(conv.args[0]), self.b.qweight(conv.args[1])
            if (x is None or w is None or attrs.data_layout != "NCHW" or attrs.kernel_layout != "OIHW"
                    or (w.scale.size > 1 and w.axis != 0)):   # per-tensor: no axis (TVM reads 1)
                return None
            return "conv2d", conv, x, w, 0
        transposed = self.b.call(expr, "relax.nn.conv2d_transpose")
        if transposed is not None:
            return self._transposed_as_conv(transposed)
        matmul = self.b.call(expr, "relax.matmul")
        if matmul is None:
            return None
        x = self.b.qtensor(matmul.args[0])
        weight, transposed = matmul.args[1], self.b.call(matmul.args[1], "relax.permute_dims")
        if transposed is not None:
            weight = transposed.args[0]
        w = self.b.qweight(weight)
        if x is None or w is None or w.values.ndim != 2:
            return None
        # The weight as [K, N]; its scale axis must be N (the output channels).
        if transposed is not None:
            if list(transposed.attrs.axes) != [1, 0] or (w.scale.size > 1 and w.axis != 0):
                return None
            w = type(w)(w.values.T, w.scale, 1)
        elif w.scale.size > 1 and w.axis != 1:
            return None
        return "matmul", matmul, x, type(w)(w.values, w.scale, 1), 1

    def _transposed_as_conv(self, call: relax.Call):
        """A conv2d_transpose (one group, no dilation) as a stride-1 conv onto stride x stride
        phase channels (transposed_conv.py), requantized like any conv, whose 8-bit output a
        depth-to-space and a crop put in place: integer and exact, where the float op runs TVM's
        unscheduled loops (the FPN detector's library took 4.4x as long with it,
        benchmarks/results/wild_avx2.md)."""
        attrs = call.attrs
        x, w = self.b.qtensor(call.args[0]), self.b.qweight(call.args[1])
        if (x is None or w is None or w.values.ndim != 4 or (w.scale.size > 1 and w.axis != 1)
                or attrs.kernel_layout != "IOHW" or attrs.data_layout != "NCHW" or int(attrs.groups) != 1
                or any(int(d) != 1 for d in attrs.dilation)):
            return None
        out_shape = [int(d) for d in call.ty.shape]
        strides = [int(s) for s in attrs.strides]
        phase = phase_conv(w.values, strides, [int(p) for p in list(attrs.padding)[:2]],
                           [int(d) for d in call.args[0].ty.shape][2:], out_shape[2:])
        if phase is None:
            return None
        scale = np.repeat(w.scale, strides[0] * strides[1]) if w.scale.size > 1 else w.scale
        self._after = lambda y: self._depth_to_space(y, phase, out_shape)
        # what _linear and _int_conv2d read from a conv2d call: the phase conv's attributes
        conv = SimpleNamespace(attrs=SimpleNamespace(strides=(1, 1), padding=phase.padding, dilation=(1, 1), groups=1),
                               ty=call.ty)
        return "conv2d", conv, x, type(w)(phase.weight, scale, 0), 0

    def _depth_to_space(self, y: relax.Expr, phase: PhaseConv, out_shape: list[int]) -> relax.Expr:
        """[N, O*sh*sw, Qh, Qw] -> [N, O, Qh*sh, Qw*sw], channel (o, a, b) to pixel (q*sh + a, q'*sw + b),
        then the output's rows and columns from the crop on."""
        n, channels, height, width = out_shape
        (sh, sw), (qh, qw), (top, left) = phase.strides, phase.size, phase.crop
        blocks = self.builder_.emit(relax.op.reshape(y, (n, channels, sh, sw, qh, qw)))
        moved = self.builder_.emit(relax.op.permute_dims(blocks, [0, 1, 4, 2, 5, 3]))
        placed = self.builder_.emit(relax.op.reshape(moved, (n, channels, qh * sh, qw * sw)))
        if (top, left, qh * sh, qw * sw) == (0, 0, height, width):
            return placed
        return self.builder_.emit(relax.op.strided_slice(placed, axes=[2, 3], begin=[top, left],
                                                         end=[top + height, left + width]))

    def _int_conv2d(self, conv: relax.Call, x: QTensor, w, tag: str) -> relax.Expr:
        attrs = conv.attrs
        data = self.visit_expr(x.var)
        padding = [int(p) for p in attrs.padding]
        if x.zero_point != 0 and any(padding):
            # Pad with the zero point (the value that means 0.0), not with 0. With zp = 0 (after
            # a ReLU, the usual case) the conv pads itself, which keeps layout conversion clean.
            top, left, bottom, right = padding
            data = self.builder_.emit(relax.op.nn.pad(
                data, [0, 0, 0, 0, top, bottom, left, right], pad_value=float(x.zero_point)), f"{tag}_pad")
            self._pending.update(input_padding=tuple(padding), pad_value=x.zero_point)
            padding = [0, 0, 0, 0]
        return self.builder_.emit(relax.op.nn.conv2d(
            data, _const(w.values, "int8"), strides=attrs.strides, padding=padding, dilation=attrs.dilation,
            groups=int(attrs.groups), out_dtype="int32"), f"{tag}_acc")

    def _int_matmul(self, x: QTensor, w, name: str = "") -> relax.Expr:
        return self.builder_.emit(relax.op.matmul(self.visit_expr(x.var), _const(w.values, "int8"),
                                                  out_dtype="int32"), name)

    def _two_quantized(self, core, op: str):
        """(a, b) where `core` is op(DQ(a), DQ(b)) of two per-tensor quantized tensors, else None."""
        call = self.b.call(core, op)
        operands = None if call is None else [self.b.qtensor(arg) for arg in call.args]
        return None if operands is None or None in operands else operands

    def _residual_add(self, core, out: QTensor):
        operands = self._two_quantized(core, "relax.add")
        if operands is None:
            return None
        a, b = operands
        tag = self._tag()
        self._pending = {"tag": tag, "zero_points": (a.zero_point, b.zero_point)}
        return self._scale_terms([(self._centred(a), np.array(a.scale / out.scale)),
                                  (self._centred(b), np.array(b.scale / out.scale))], out, sum_name=f"{tag}_acc")

    def _product(self, core, out: QTensor):
        """(a - za)(b - zb) * s_a s_b / s_out: the product of two 8-bit codes fits int32 exactly,
        and one rounding puts it on the output grid."""
        operands = self._two_quantized(core, "relax.multiply")
        if operands is None:
            return None
        a, b = operands
        product = self.builder_.emit(relax.op.multiply(self._centred(a), self._centred(b)))
        bound = max(abs(v) for v in DTYPE_RANGE[a.dtype]) * max(abs(v) for v in DTYPE_RANGE[b.dtype])
        return self._scale_terms([(product, np.array(a.scale * b.scale / out.scale))], out, bound)

    def _channel_affine(self, core, out: QTensor):
        """DQ(x) * s + t with constant s and t broadcast over x, from any chain of Mul and Add by
        constants (a BatchNorm that no layer absorbs, DenseNet's and pre-activation ResNets' BN ->
        ReLU; Caffe's BN then Scale is two such pairs): (x - zx) * sign(s) times |s| s_x / s_out,
        plus t / s_out, rounded once."""
        expr, scale, shift, steps = core, np.ones(()), None, 0
        while self.b.qtensor(expr) is None:   # y = expr * scale + shift, expr walked inwards
            inner = self._constant_operand(expr)
            if inner is None:
                return None
            expr, name, constant = inner
            if name == "relax.multiply":
                scale = scale * constant
            else:
                shift = constant * scale if shift is None else shift + constant * scale
            steps += 1
        x = self.b.qtensor(expr)
        if not steps or not np.all(np.isfinite(scale)):
            return None
        real = x.scale * scale / out.scale
        if not np.any(real != 0) or (shift is not None and not np.all(np.isfinite(shift))):
            return None
        shape = np.broadcast_shapes(real.shape, () if shift is None else shift.shape)
        real = np.broadcast_to(real, shape)
        term = self._centred(x)
        if np.any(real < 0):
            term = self.builder_.emit(relax.op.multiply(term, _const(np.sign(real), "int32")))
        # an offset beyond 2**20 output steps saturates whatever x is: clipped, it stays in int64
        offset = None if shift is None else np.broadcast_to(np.clip(shift / out.scale, -2 ** 20, 2 ** 20), shape)
        return self._scale_terms([(term, np.abs(real))], out, offset=offset)

    def _constant_operand(self, expr):
        """(the other operand, the op, the float constant) where `expr` adds or multiplies by a
        float constant, else None."""
        for name in ("relax.add", "relax.multiply"):
            call = self.b.call(expr, name)
            for op, other in ((call.args[0], call.args[1]), (call.args[1], call.args[0])) if call is not None else ():
                constant = self.b.constant(other)
                if constant is not None and constant.dtype.kind == "f":
                    return op, name, constant.astype(np.float64)
        return None

    def _pass_through(self, core, out: QTensor):
        call = self.b.value(core)
        if op_name(call) not in PASS_THROUGH:
            return None
        x = self.b.qtensor(call.args[0])
        if x is None:
            return None
        # max and the data-movement ops commute with the monotone per-tensor requantization.
        moved = self.builder_.emit(relax.Call(call.op, [self.visit_expr(x.var)] + list(call.args[1:]), call.attrs))
        return self._onto_grid(QTensor(moved, x.scale, x.zero_point, x.dtype), out)

    def _split_item(self, core, out: QTensor):
        """One output of a Split of DQ(x) (ShuffleNet's channel split): the integer tensor is
        split once, and each piece put on its own output's grid."""
        item = self.b.value(core)
        if not isinstance(item, relax.TupleGetItem):
            return None
        call = self.b.call(item.tuple_value, "relax.split")
        x = self.b.qtensor(call.args[0]) if call is not None else None
        if x is None:
            return None
        if call not in self._splits:
            self._splits[call] = self.builder_.emit(relax.Call(call.op, [self.visit_expr(x.var)], call.attrs))
        piece = self.builder_.emit(relax.TupleGetItem(self._splits[call], item.index))
        return self._onto_grid(QTensor(piece, x.scale, x.zero_point, x.dtype), out)

    def _concat(self, core, out: QTensor):
        call = self.b.call(core, "relax.concat")
        if call is None:
            return None
        parts = [self.b.qtensor(field) for field in self.b.value(call.args[0]).fields]
        if any(p is None for p in parts):
            return None
        pieces = [self._finish(self._onto_grid(p, out), out, -np.inf, np.inf) for p in parts]
        return self.builder_.emit(relax.op.astype(relax.op.concat(pieces, axis=int(call.attrs.axis)), "int64"))

    def _global_mean(self, core, out: QTensor):
        call = self.b.call(core, "relax.mean")
        x = self.b.qtensor(call.args[0]) if call is not None else None
        if x is None or call.attrs.axis is None:
            return None
        shape = [int(d) for d in call.args[0].ty.shape]
        count = int(np.prod([shape[int(a)] for a in call.attrs.axis]))
        total = self.builder_.emit(relax.op.sum(self._centred(x), axis=call.attrs.axis,
                                                keepdims=bool(call.attrs.keepdims)))
        return self._average(total, count, x, out)

    def _avg_pool(self, core, out: QTensor):
        call = self.b.call(core, "relax.nn.avg_pool2d")
        x = self.b.qtensor(call.args[0]) if call is not None else None
        if x is None:
            return None
        attrs = call.attrs
        padded = any(int(p) for p in attrs.padding)
        if attrs.layout != "NCHW" or attrs.ceil_mode or (padded and not attrs.count_include_pad):
            return None
        channels = int(call.args[0].ty.shape[1])
        kh, kw = (int(k) for k in attrs.pool_size)
        ones = _const(np.ones((channels, 1, kh, kw)), "int32")
        centred = self._centred(x)       # padding a centred tensor with 0 is padding with zp
        total = self.builder_.emit(relax.op.nn.conv2d(
            centred, ones, strides=attrs.strides, padding=attrs.padding, dilation=attrs.dilation,
            groups=channels, out_dtype="int32"))
        return self._average(total, kh * kw, x, out)

    def _requantize_only(self, core, out: QTensor):
        x = self.b.qtensor(core)
        return None if x is None else self._onto_grid(x, out)

    # -- arithmetic helpers --------------------------------------------------------------
    def _average(self, total: relax.Expr, count: int, x: QTensor, out: QTensor) -> relax.Expr:
        """round(total / count) on the output grid. On the same grid (pooling keeps the scale)
        the division is exact, ties to even: a fixed-point 1/count would round the frequent
        exact ties (a mean of integers) at random."""
        if np.float32(x.scale) != np.float32(out.scale):
            return self._scale_terms([(total, np.array(x.scale / (count * out.scale)))], out)
        n = _const(count, "int64")
        wide = self.builder_.emit(relax.op.astype(total, "int64"))
        quotient = self.builder_.emit(relax.op.floor_divide(wide, n))
        twice_rest = self.builder_.emit(relax.op.multiply(relax.op.subtract(wide, relax.op.multiply(quotient, n)),
                                                          _const(2, "int64")))
        odd = relax.op.bitwise_and(quotient, _const(1, "int64"))
        up = relax.op.logical_or(relax.op.greater(twice_rest, n),
                                 relax.op.logical_and(relax.op.equal(twice_rest, n), relax.op.equal(odd, _const(1, "int64"))))
        rounded = self.builder_.emit(relax.op.add(quotient, relax.op.astype(up, "int64")))
        return self.builder_.emit(relax.op.add(rounded, _const(out.zero_point, "int64")))

    def _centred(self, x: QTensor) -> relax.Expr:
        """x - zp as int32."""
        data = self.builder_.emit(relax.op.astype(self.visit_expr(x.var), "int32"))
        if x.zero_point == 0:
            return data
        return self.builder_.emit(relax.op.subtract(data, _const(x.zero_point, "int32")))

    def _onto_grid(self, x: QTensor, out: QTensor) -> relax.Expr:
        """An integer tensor re-expressed on the output's grid (free when the grids agree)."""
        if np.float32(x.scale) == np.float32(out.scale):
            shifted = self.builder_.emit(relax.op.astype(self.visit_expr(x.var), "int64"))
            if x.zero_point == out.zero_point:
                return shifted
            return self.builder_.emit(relax.op.add(shifted, _const(out.zero_point - x.zero_point, "int64")))
        return self._scale_terms([(self._centred(x), np.array(x.scale / out.scale))], out)

    def _scale_terms(self, terms, out: QTensor, bound=2 ** 31, sum_name: str = "", offset=None) -> relax.Expr:
        """round(sum_i t_i * real_i + offset) + zp_out in int64, t_i int32, real_i >= 0 and the
        real `offset` broadcastable; `bound`: the largest |t| of a single term (per channel, or
        one number).

        One shift per layer, from the largest multiplier (which gets 31 significant bits, the
        others fewer: a channel 2**-10 of the largest still has 21, below float32's rounding of
        the reference's own arithmetic). Per-channel multipliers, one shift: the kernels shift
        by a constant, and several terms (a residual add) add before the single rounding."""
        largest = max(float(np.max(real)) for _, real in terms)
        shift = np.int64(multiplier_and_shift(np.array(largest))[1])
        ms = [np.rint(np.asarray(real, np.float64) * 2.0 ** shift).astype(np.int64) for _, real in terms]
        total = None
        for (term, _), m in zip(terms, ms):
            wide = self.builder_.emit(relax.op.astype(term, "int64"))
            product = self.builder_.emit(relax.op.multiply(wide, _const(m, "int64")))
            total = product if total is None else self.builder_.emit(relax.op.add(total, product), sum_name)
        if offset is not None:   # in units of 2**-shift, like the products: one rounding for both
            total = self.builder_.emit(relax.op.add(total, _const(np.rint(offset * 2.0 ** shift), "int64")))
        # Round half to even at bit `shift` (fixed_point.round_shift), then the zero point. One
        # int32 term whose multipliers admit no exact tie rounds half up: the same result, cheaper.
        shift_c = _const(shift, "int64")
        half_up = len(terms) == 1 and offset is None and not ties_possible(ms[0], shift, bound)
        self._fixed_point = (tuple(ms), int(shift), not half_up)
        if half_up:
            half = np.int64(1) << (np.asarray(shift, np.int64) - 1)
            total = self.builder_.emit(relax.op.add(total, _const(half, "int64")))
        else:
            odd = self.builder_.emit(relax.op.bitwise_and(relax.op.right_shift(total, shift_c), _const(1, "int64")))
            half = (np.int64(1) << (np.asarray(shift, np.int64) - 1)) - 1
            total = self.builder_.emit(relax.op.add(relax.op.add(total, _const(half, "int64")), odd))
        total = self.builder_.emit(relax.op.right_shift(total, shift_c))
        return self.builder_.emit(relax.op.add(total, _const(out.zero_point, "int64")))

    def _finish(self, integer: relax.Expr, out: QTensor, lo: float, hi: float, record: dict | None = None) -> relax.Expr:
        """Clamp to the dtype range and the ReLU/Clip bounds on the output grid, then cast; with
        `record` (a conv, matmul or residual add), name the output and keep the layer's record."""
        qmin, qmax = DTYPE_RANGE[out.dtype]
        qmin = max(qmin, quantize_bound(lo, out.scale, out.zero_point))
        qmax = min(qmax, quantize_bound(hi, out.scale, out.zero_point))
        clamped = self.builder_.emit(relax.op.maximum(integer, _const(qmin, "int64")))
        clamped = self.builder_.emit(relax.op.minimum(clamped, _const(qmax, "int64")))
        if record is None:
            return self.builder_.emit(relax.op.astype(clamped, out.dtype))
        multipliers, shift, ties = self._fixed_point
        layer = LayerRequantization(record["tag"], Requantize(out.zero_point, int(qmin), int(qmax), out.dtype, shift, ties),
                                    multipliers, record.get("correction"), record.get("zero_points", ()),
                                    record.get("input_padding"), record.get("pad_value", 0))
        self.records[layer.tag] = layer
        return self.builder_.emit(relax.op.astype(clamped, out.dtype), layer.out_name)


def rewrite_to_integer(mod: tvm.IRModule) -> tuple[tvm.IRModule, Counter]:
    """The module with every matched QDQ group in integer arithmetic, and what was lowered."""
    mod, lowered, _ = lower_to_integer(mod)
    return mod, lowered


def lower_to_integer(mod: tvm.IRModule) -> tuple[tvm.IRModule, Counter, dict[str, LayerRequantization]]:
    """`rewrite_to_integer`, and the requantization record of each conv, matmul and residual add
    (by tag), which kernel selection (apply_schedules.use_dot_kernels) lowers."""
    rewriter = _IntegerRewriter(mod, Bindings(mod["main"]))
    main = rewriter.visit_expr(mod["main"])
    mod = mod.clone() if hasattr(mod, "clone") else tvm.IRModule(dict(mod.functions))
    mod["main"] = main
    mod = relax.transform.DeadCodeElimination()(mod)
    return mod, rewriter.lowered, rewriter.records
