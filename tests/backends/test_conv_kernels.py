"""The x86 convolution kernels (schedules/int8_conv.py) against numpy's integer convolution,
one kernel at a time: u8 activations x s8 weights -> s32, full-range weights (-128..127:
where u8 x s8 pairs overflow 16 bits), every geometry the networks use. The same schedule with
its dot products emulated by loops runs on any CPU; the instructions themselves where this CPU
has them."""

from __future__ import annotations

import numpy as np
import pytest
import tvm

from qcompiler.backends.tvm import fixed_point
from qcompiler.backends.tvm.schedules import int8_conv
from qcompiler.backends.tvm.schedules.requantize import Requantize, RequantizeCode, requantize_table
from qcompiler.backends.tvm.targets import host_dot_kernels, native_target, tvm_target

GEOMETRIES = [   # h, w, ci, co, kernel, stride, dilation, padding, pad value
    (7, 7, 32, 48, 1, 1, 1, 0, 0),
    (9, 11, 12, 16, 3, 1, 1, 1, 0),
    (12, 12, 8, 32, 3, 2, 1, 1, 117),     # the first conv: strided, padded with the input's zero point
    (10, 10, 4, 16, 3, 1, 2, 2, 0),
]


def _reference(x, weight, stride, dilation, padding, pad_value):
    """int64 NHWC convolution of u8 x [N,H,W,Ci] by s8 weight [Co,KH,KW,Ci]."""
    co, kh, kw, _ = weight.shape
    padded = np.pad(x.astype(np.int64), ((0, 0), (padding, padding), (padding, padding), (0, 0)),
                    constant_values=pad_value)
    ho = (padded.shape[1] - dilation * (kh - 1) - 1) // stride + 1
    wo = (padded.shape[2] - dilation * (kw - 1) - 1) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, co), np.int64)
    for dy in range(kh):
        for dx in range(kw):
            window = padded[:, dy * dilation:dy * dilation + stride * ho:stride,
                            dx * dilation:dx * dilation + stride * wo:stride]
            out += np.einsum("nhwc,oc->nhwo", window, weight[:, dy, dx].astype(np.int64))
    return out


def _built(task, emulated: bool):
    if emulated:
        with int8_conv.emulated_dot_products():
            func = int8_conv.conv2d_kernel(*task.__dict__.values())
    else:
        func = int8_conv.conv2d_kernel(*task.__dict__.values())
    return tvm.tirx.build(func, target=tvm.target.Target("llvm") if emulated else tvm_target(native_target()))


def _host_isa() -> str:
    kernels = host_dot_kernels()
    if not kernels:
        pytest.skip("this CPU has neither AVX-512 VNNI nor AVX2: no x86 dot-product kernel to run")
    return kernels[0]


def _packed(weight: np.ndarray, isa: str, bits: int) -> list[np.ndarray]:
    from qcompiler.backends.tvm.apply_schedules import packed_weights

    return packed_weights(weight, isa, bits)


def _run(isa: str, geometry, emulated: bool, bits: int = 8, grid: bool = False) -> None:
    """One kernel against numpy: full-range weights, or with `grid` weights in [-8, 7] stored
    at `bits` (2: each channel spanning 4 values, as the 2-bit presets leave them)."""
    h, w, ci, co, k, stride, dilation, padding, pad_value = geometry
    rng = np.random.default_rng(h * w + ci)
    x = rng.integers(0, 256, (1, h, w, ci)).astype(np.uint8)
    if grid:
        low = rng.integers(-8, 5, (co, 1, 1, 1)) if bits == 2 else -8
        weight = (low + rng.integers(0, 4 if bits == 2 else 16, (co, k, k, ci))).astype(np.int8)
        weight[0] = -8 if bits < 8 else 7
    else:
        weight = rng.integers(-128, 128, (co, k, k, ci)).astype(np.int8)
        weight[0] = -128   # the extremes: 255 * -128 products in every pair
    x[0, 0, 0] = 255
    task = int8_conv.ConvTask(1, h, w, ci, co, k, k, (stride,) * 2, (dilation,) * 2, (padding,) * 4, None, bits, isa,
                              pad_value)
    built = _built(task, emulated)
    expected = _reference(x, weight, stride, dilation, padding, pad_value)
    out = tvm.runtime.tensor(np.zeros(expected.shape, np.int32))
    built[task.name()](tvm.runtime.tensor(x), *(tvm.runtime.tensor(p) for p in _packed(weight, isa, bits)), out)
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("isa", ["avx2", "avx2_8", "vnni"])
def test_kernel_schedule_with_emulated_dot_products_is_exact(isa, geometry):
    _run(isa, geometry, emulated=True)


@pytest.mark.parametrize("geometry", GEOMETRIES[:2])
def test_avx2_kernel_on_8_channel_blocks_is_exact(geometry):
    """avx2_8: the classifier's form (1000 outputs, 8 (mod 16), few pixels: no padding to 16)."""
    if "avx2" not in host_dot_kernels():
        pytest.skip("needs a CPU with AVX2 and without AVX-512 VNNI (whose builds use vnni8)")
    _run("avx2_8", geometry, emulated=False)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_this_cpus_kernel_is_exact(geometry):
    _run(_host_isa(), geometry, emulated=False)


@pytest.mark.parametrize("bits", [8, 4, 2])
@pytest.mark.parametrize("geometry", GEOMETRIES)   # 8, 3, 2 and 1 blocks of 4 input channels summed in int16
def test_avx2_kernel_for_the_4bit_grid_is_exact(geometry, bits):
    """avx2ub (vpmaddubsw: u8 x s8 pairs into int16, exact for |w| <= 8) with the weights
    stored as int8, two to a byte and four to a byte: emulated, and on this CPU with AVX2."""
    _run("avx2ub", geometry, emulated=True, bits=bits, grid=True)
    if "avx2" in host_dot_kernels():
        _run("avx2ub", geometry, emulated=False, bits=bits, grid=True)


# code: (shift, accumulator magnitude, multipliers' bit range): each form of the fused
# requantization, most outputs inside the clamp (up to +-256 around zero point 128)
REQUANTIZATIONS = {
    "int64 ties": (RequantizeCode("uint8", ties=True), 40, 2 ** 17, (30, 31)),
    "int64 half up": (RequantizeCode("uint8", ties=False), 40, 2 ** 17, (30, 31)),
    "int32 parts": (RequantizeCode("uint8", ties=False, int32=True), 43, 2 ** 20, (30, 31)),
    "high word, shift 32": (RequantizeCode("uint8", ties=False, high_word=True), 32, 2 ** 24, (14, 15)),
    "high word, shift 45": (RequantizeCode("uint8", ties=False, high_word=True), 45, 2 ** 22, (30, 31)),
    # the largest products: every output rounds to -1, 0 or 1 (2^31 * 2^31 / 2^62)
    "high word, shift 62": (RequantizeCode("int8", ties=False, high_word=True), 62, 2 ** 31, (30, 31)),
}


def _requantization_case(name: str, isa: str, emulated: bool) -> None:
    """A 1x1 conv whose corrections spread the accumulators over +-`magnitude`, requantized with
    the case's multipliers and shift, against fixed_point's int64 reference."""
    code, shift, magnitude, (m_low, m_high) = REQUANTIZATIONS[name]
    rng = np.random.default_rng(shift)
    co, ci = 32, 8
    x = rng.integers(0, 256, (1, 4, 4, ci)).astype(np.uint8)
    weight = rng.integers(-8, 8, (co, 1, 1, ci)).astype(np.int8)
    dots = np.einsum("nhwc,oc->nhwo", x.astype(np.int64), weight[:, 0, 0].astype(np.int64))
    targets = np.rint(rng.uniform(-1, 1, co) * (magnitude - 2 * 255 * 8 * ci)).astype(np.int64)
    corr = targets - dots[0, 0, 0]
    m = rng.integers(2 ** m_low, 2 ** m_high, co)
    zero_point, lo, hi = (0, -128, 127) if code.dtype == "int8" else (128, 0, 255)
    rq = Requantize(zero_point, lo, hi, code.dtype, shift, code.ties)
    task = int8_conv.ConvTask(1, 4, 4, ci, co, 1, 1, (1, 1), (1, 1), (0,) * 4, code, 8, isa)
    (packed,) = _packed(weight, isa, 8)
    out = tvm.runtime.tensor(np.zeros((1, 4, 4, co), code.dtype))
    _built(task, emulated)[task.name()](tvm.runtime.tensor(x), tvm.runtime.tensor(packed),
                                        tvm.runtime.tensor(requantize_table(corr, m, rq, co, co)), out)
    acc = dots + corr
    assert np.abs(acc).max() < magnitude and np.abs(acc).max() > magnitude / 2
    rounded = (fixed_point.round_shift if code.ties else fixed_point.round_shift_half_up)(acc * m, np.int64(shift))
    expected = np.clip(rounded + zero_point, lo, hi)
    assert np.mean((expected > lo) & (expected < hi)) > 0.5 and len(np.unique(expected)) >= 3   # not all clamped
    np.testing.assert_array_equal(out.numpy(), expected)


@pytest.mark.parametrize("name", list(REQUANTIZATIONS))
def test_requantization_forms_match_the_int64_reference(name):
    _requantization_case(name, "vnni", emulated=True)
    _requantization_case(name, _host_isa(), emulated=False)
