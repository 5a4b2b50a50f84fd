"""A transposed convolution as a stride-1 convolution onto stride x stride phases of channels.

A ConvTranspose of stride s, kernel K and leading padding p puts the product of input pixel i
and tap k on output t = i*s + k - p. Write u = t + p = q*s + r with the phase r < s: output u
takes the input pixels q - m with the taps m*s + r, for m < M = ceil(K / s). For each phase
that is a stride-1 correlation of the input with M taps (r + (M-1)*s, ..., r + s, r; those past
K are zero). So the whole layer is one convolution of kernel M onto O*s*s output channels
(o, r_h, r_w), a depth-to-space of its output, and a crop of the leading padding: exact in
integers, on the integer conv kernels, requantized per channel like any conv before the
depth-to-space moves the 8-bit values. With kernel = stride it is a 1x1 conv and no crop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PhaseConv:
    weight: np.ndarray                   # [O*sh*sw, C, Mh, Mw], output channel (o, r_h, r_w)
    padding: tuple[int, int, int, int]   # of the input: top, left, bottom, right
    strides: tuple[int, int]             # (sh, sw): the phases per output row and column
    size: tuple[int, int]                # the convolution's output rows and columns (Qh, Qw)
    crop: tuple[int, int]                # first row and column of the output in the depth-to-space result


def phase_conv(weight: np.ndarray, strides, begin_pads, in_size, out_size) -> PhaseConv | None:
    """The convolution computing ConvTranspose(weight [C, O, KH, KW], one group, no dilation)
    from an input of `in_size` (H, W) to an output of `out_size`; None where the leading padding
    is so large that the input itself would have to be cropped."""
    dims = [_phase_dim(k, s, p, i, t) for k, s, p, i, t in zip(weight.shape[2:], strides, begin_pads, in_size, out_size)]
    if None in dims:
        return None
    (mh, top, bottom, qh, crop_h), (mw, left, right, qw, crop_w) = dims
    rows, cols = (_taps(k, s) for k, s in zip(weight.shape[2:], strides))
    padded = np.pad(weight, ((0, 0), (0, 0), (0, 1), (0, 1)))   # tap -1: the zero past the kernel
    phases = padded[:, :, rows[:, :, None, None], cols[None, None, :, :]]   # [C, O, sh, Mh, sw, Mw]
    channels_in, channels_out = weight.shape[:2]
    values = phases.transpose(1, 2, 4, 0, 3, 5).reshape(channels_out * strides[0] * strides[1], channels_in, mh, mw)
    return PhaseConv(values, (top, left, bottom, right), tuple(strides), (qh, qw), (crop_h, crop_w))


def node_phase_conv(attrs: dict, weight_shape, in_size, out_size) -> PhaseConv | None:
    """`phase_conv` of a ConvTranspose node (its ONNX attributes, auto_pad and defaults; zero weights: the
    geometry), None where the backend leaves it float: groups, dilation, or padding that would
    crop the input. For the cost models and benchmarks that must count what the rewrite lowers."""
    if int(attrs.get("group", 1)) != 1 or any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
        return None
    strides = tuple(attrs.get("strides", (1, 1)))
    return phase_conv(np.zeros(weight_shape, np.int8), strides, begin_pads(attrs, weight_shape[2:], strides),
                      in_size, out_size)


def begin_pads(attrs: dict, kernel, strides) -> tuple[int, ...]:
    """The leading padding of a ConvTranspose as TVM's importer reads it: `pads`, or from
    `auto_pad` (SAME_*: the spec's total for an output of input x stride, the odd pixel at the
    end for SAME_UPPER and at the start for SAME_LOWER; VALID: none)."""
    auto = attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto == "VALID":
        return (0,) * len(kernel)
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        return tuple(attrs.get("pads", (0,) * 2 * len(kernel)))[:len(kernel)]
    extra = attrs.get("output_padding", (0,) * len(kernel))
    totals = [max(0, k + o - s) for k, o, s in zip(kernel, extra, strides)]
    return tuple(t // 2 if auto == "SAME_UPPER" else t - t // 2 for t in totals)


def _taps(kernel: int, stride: int) -> np.ndarray:
    """[phase r, position j] -> the kernel tap (M-1-j)*s + r, or -1 past the kernel."""
    m = -(-kernel // stride)
    taps = (m - 1 - np.arange(m))[None, :] * stride + np.arange(stride)[:, None]
    return np.where(taps < kernel, taps, -1)


def _phase_dim(kernel: int, stride: int, pad: int, size_in: int, size_out: int):
    """(M, leading and trailing input padding, conv output size Q, crop) along one axis: the
    conv's output q' is phase row q = q' + q_min, which reads inputs q - M + 1 .. q."""
    m = -(-kernel // stride)
    q_min, q_max = pad // stride, (size_out - 1 + pad) // stride
    lead = m - 1 - q_min
    if lead < 0:
        return None
    trail = max(0, q_max - q_min + m - size_in - lead)
    return m, lead, trail, size_in + lead + trail - m + 1, pad - q_min * stride
