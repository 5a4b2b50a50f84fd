"""Convolution geometry shared by the kernels: output sizes, the padded input, the pixel tile."""

from __future__ import annotations


def pixel_tile(width: int, preferred: tuple[int, ...] = (8, 7, 6, 4, 2, 1)) -> int:
    """Output pixels per register tile: the first of `preferred` dividing the output width (1 if none)."""
    return next((t for t in preferred if width % t == 0), 1)


def output_size(h: int, w: int, kh: int, kw: int, stride: tuple, dilation: tuple, padding: tuple) -> tuple[int, int]:
    """(rows, columns) of a convolution's output; padding is (top, left, bottom, right)."""
    top, left, bottom, right = padding
    return ((h + top + bottom - dilation[0] * (kh - 1) - 1) // stride[0] + 1,
            (w + left + right - dilation[1] * (kw - 1) - 1) // stride[1] + 1)


def padded_input(topi, x, padding: tuple, pad_value: int = 0):
    """The NHWC input padded by (top, left, bottom, right) with `pad_value` (x itself when no padding)."""
    top, left, bottom, right = padding
    if not any(padding):
        return x
    return topi.nn.pad(x, [0, top, left, 0], [0, bottom, right, 0], pad_value=pad_value, name="padded")


class KernelGeometry:
    """Output size of a kernel task dataclass (fields h, w, kh, kw, stride, dilation, padding)."""

    def output_hw(self) -> tuple[int, int]:
        return output_size(self.h, self.w, self.kh, self.kw, self.stride, self.dilation, self.padding)

    def output_width(self) -> int:
        return self.output_hw()[1]

    def template_tile(self) -> int:
        """The template's pixel tile (a tuning database may choose another)."""
        return pixel_tile(self.output_width())

    def written_kernel(self, tile):
        """The kernel written as TIR with `tile` pixels per register tile, or None: the task's
        TE compute scheduled by its `schedule`."""
        return None
