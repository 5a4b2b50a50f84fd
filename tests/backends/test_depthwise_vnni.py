"""The AVX-512 VNNI depthwise kernel (schedules/depthwise_vnni.py: four kernel rows per
vpdpbusd, columns built once per output row and rolled down the rows) against the generic
depthwise kernel (schedules/depthwise.py) and numpy: bit for bit, for every geometry the
networks use and every requantization form. Its dot products emulated by vector arithmetic run
on any x86 CPU; the instruction itself where this CPU has it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import numpy as np
import pytest
import tvm

from qcompiler.backends.tvm import fixed_point, tuning
from qcompiler.backends.tvm.schedules import int8_conv
from qcompiler.backends.tvm.schedules.depthwise import DepthwiseTask, pack_weight_int4
from qcompiler.backends.tvm.schedules.requantize import Requantize, RequantizeCode, requantize_table
from qcompiler.backends.tvm.targets import host_dot_kernels, native_target, tvm_target

GEOMETRIES = [   # n, h, w, c, kh, kw, stride, dilation, padding (top, left, bottom, right)
    (1, 14, 14, 32, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),    # MobileNetV2's, rolled by one row
    (1, 14, 14, 48, 3, 3, (2, 2), (1, 1), (1, 1, 1, 1)),    # stride 2: rolled by two rows
    (2, 9, 11, 48, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),     # two images: each starts its columns anew
    (2, 9, 11, 16, 5, 5, (1, 1), (1, 1), (2, 2, 2, 2)),     # 5 rows: two groups of four, not rolled
    (1, 12, 12, 16, 5, 5, (2, 2), (1, 1), (1, 2, 2, 1)),    # asymmetric padding
    (1, 10, 10, 32, 3, 3, (1, 1), (2, 2), (2, 2, 2, 2)),    # dilation: not rolled
    (1, 8, 8, 16, 4, 4, (1, 1), (1, 1), (0, 0, 0, 0)),      # four rows: the whole lane, no padding
    (1, 6, 9, 16, 1, 3, (1, 2), (1, 1), (0, 1, 0, 1)),      # one row
    (1, 14, 14, 96, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),    # over 2^17 multiply-adds: rows in 2 chunks
    (1, 112, 112, 16, 3, 3, (1, 1), (1, 1), (1, 1, 1, 1)),  # over 2^20 multiply-adds: rows in 8 chunks
]

FORMS = {   # the accumulators stay below 2^20 (255 * 128 * 25 < 2^20), the int32 form's range
    "int32 parts": RequantizeCode("uint8", ties=False, int32=True),
    "int64 ties": RequantizeCode("uint8", ties=True),
    "high word": RequantizeCode("int8", ties=False, high_word=True),
}


def _case(geometry, form="int32 parts", int4=False, seed=0):
    n, h, w, c, kh, kw, stride, dilation, padding = geometry
    code = FORMS[form]
    shift = 34 if int4 else 38   # m / 2^shift ~ 2^-4.5 or 2^-8.5: outputs spread over the grid
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, h, w, c)).astype(np.uint8)
    weight = rng.integers(-8, 8, (kh, kw, c)) if int4 else rng.integers(-128, 128, (kh, kw, c))
    weight = weight.astype(np.int8)
    weight[..., 0] = -8 if int4 else -128   # the extremes
    x[0, 0, 0] = 255
    corr = rng.integers(-2000, 2000, c) - 128 * weight.astype(np.int64).sum((0, 1))   # centred, as a zero point's
    m = rng.integers(2 ** 29, 2 ** 30, c)
    zero_point, lo, hi = (0, -128, 127) if code.dtype == "int8" else (128, 0, 255)
    rq = Requantize(zero_point, lo, hi, code.dtype, shift, code.ties)
    task = DepthwiseTask(n, h, w, c, kh, kw, stride, dilation, padding, code, int4, vnni=True)
    stored = pack_weight_int4(weight) if int4 else weight
    return task, x, weight, stored, requantize_table(corr, m, rq, c, c), (corr, m, rq)


def _run(task, tile, x, stored, table, emulated: bool) -> np.ndarray:
    with int8_conv.emulated_dot_products() if emulated else contextlib.nullcontext():
        func = tuning.scheduled(task, tile)
    built = tvm.tirx.build(func.with_attr("global_symbol", "main"),
                           target=tvm.target.Target("llvm") if emulated else tvm_target(native_target()))
    ho, wo = task.output_hw()
    out = tvm.runtime.tensor(np.zeros((task.n, ho, wo, task.c), task.requantize.dtype))
    built["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(stored), tvm.runtime.tensor(table), out)
    return out.numpy()


def _reference(x, weight, task, corr, m, rq) -> np.ndarray:
    """numpy: int64 depthwise convolution (zero padding), then fixed_point's requantization."""
    top, left, bottom, right = task.padding
    padded = np.pad(x.astype(np.int64), ((0, 0), (top, bottom), (left, right), (0, 0)))
    ho, wo = task.output_hw()
    acc = np.zeros((task.n, ho, wo, task.c), np.int64)
    for r in range(task.kh):
        for s in range(task.kw):
            y0, x0 = r * task.dilation[0], s * task.dilation[1]
            acc += padded[:, y0:y0 + task.stride[0] * ho:task.stride[0], x0:x0 + task.stride[1] * wo:task.stride[1]] \
                * weight[r, s].astype(np.int64)
    round_shift = fixed_point.round_shift if rq.ties else fixed_point.round_shift_half_up
    return np.clip(round_shift((acc + corr) * m, np.int64(rq.shift)) + rq.zero_point, rq.lo, rq.hi)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_emulated_kernel_equals_numpy_and_the_generic_kernel(geometry):
    task, x, weight, stored, table, (corr, m, rq) = _case(geometry)
    expected = _reference(x, weight, task, corr, m, rq)
    assert np.mean((expected > rq.lo) & (expected < rq.hi)) > 0.5 and len(np.unique(expected)) > 100
    got = _run(task, task.template_tile(), x, stored, table, emulated=True)
    np.testing.assert_array_equal(got, expected)
    generic = DepthwiseTask(*[getattr(task, f) for f in ("n", "h", "w", "c", "kh", "kw", "stride", "dilation",
                                                          "padding", "requantize")])
    np.testing.assert_array_equal(_run(generic, generic.template_tile(), x, stored, table, emulated=False), expected)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("int4", [False, True])
def test_every_requantization_form_and_4bit_weights(form, int4):
    task, x, weight, stored, table, (corr, m, rq) = _case(GEOMETRIES[2], form, int4, seed=1)
    expected = _reference(x, weight, task, corr, m, rq)
    assert np.mean((expected > rq.lo) & (expected < rq.hi)) > 0.5 and len(np.unique(expected)) > 100
    np.testing.assert_array_equal(_run(task, task.template_tile(), x, stored, table, emulated=True), expected)


def test_every_pixel_tile_computes_the_same_bits():
    """The tuning knob: any divisor of the output width."""
    task, x, weight, stored, table, (corr, m, rq) = _case(GEOMETRIES[0])
    expected = _reference(x, weight, task, corr, m, rq)
    for tile in tuning.candidate_tiles(task.output_width()):
        np.testing.assert_array_equal(_run(task, tile, x, stored, table, emulated=True), expected)


def _needs_vnni():
    if "vnni" not in host_dot_kernels():
        pytest.skip("this CPU has no AVX-512 VNNI (the emulated tests above run everywhere)")


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_this_cpus_vpdpbusd_kernel_equals_numpy(geometry):
    _needs_vnni()
    task, x, weight, stored, table, (corr, m, rq) = _case(geometry, int4=geometry[4] == 5)
    np.testing.assert_array_equal(_run(task, task.template_tile(), x, stored, table, emulated=False),
                                  _reference(x, weight, task, corr, m, rq))


SCRIPT = """
import sys, numpy as np
sys.path.insert(0, {tests!r})
from test_depthwise_vnni import GEOMETRIES, _case, _run
task, x, weight, stored, table, _ = _case(GEOMETRIES[{index}])
np.save({out!r}, _run(task, task.template_tile(), x, stored, table, emulated=False))
"""


@pytest.mark.parametrize("index,chunks", [(-2, 2), (-1, 8)], ids=["2 chunks", "8 chunks"])
def test_rows_split_over_two_threads_compute_the_same_bits(index, chunks, tmp_path):
    """A kernel over 2^17 multiply-adds splits its row chunks over TVM's thread pool (2 chunks
    below 2^20, 8 above); each chunk builds its first row's columns in full."""
    from qcompiler.backends.tvm.schedules.cpu_generic import MIN_PARALLEL_DEPTHWISE_MACS, MIN_PARALLEL_MACS

    _needs_vnni()
    task, x, weight, _, _, (corr, m, rq) = _case(GEOMETRIES[index])
    assert task.macs() >= MIN_PARALLEL_DEPTHWISE_MACS and (task.macs() >= MIN_PARALLEL_MACS) == (chunks == 8)
    outputs = []
    for threads in ("1", "2"):
        out = tmp_path / f"y{threads}.npy"
        done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=os.path.dirname(__file__), out=str(out),
                                                                    index=index)],
                              capture_output=True, text=True, env={**os.environ, "TVM_NUM_THREADS": threads}, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(np.load(out))
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], _reference(x, weight, task, corr, m, rq))
