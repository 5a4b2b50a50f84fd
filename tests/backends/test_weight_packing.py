"""The packed weight layouts against their documented element order (the kernels that decode
them are checked end to end by the fidelity tests; these pin the layouts themselves)."""

from __future__ import annotations

import numpy as np
import pytest

from qcompiler.backends.tvm.schedules import depthwise, packing, requantize


def _nibble(byte: np.ndarray, high: bool) -> np.ndarray:
    """The signed 4-bit value in one half of each byte."""
    value = (byte.astype(np.int16) >> (4 if high else 0)) & 0xF
    return np.where(value > 7, value - 16, value).astype(np.int8)


def _weights(rng, *shape) -> np.ndarray:
    return rng.integers(-8, 8, shape).astype(np.int8)


@pytest.mark.parametrize("block", [16, 8])
def test_conv_weights_four_bits_each_half_block_from_one_nibble(block):
    rng = np.random.default_rng(0)
    weight = _weights(rng, 4 * block, 3, 3, 12)
    packed = packing.pack_weight_int4(weight, block)
    blocks = packing.pack_weight(weight, block)              # [Co/B, KH, KW, Ci/4, B, 4]
    assert packed.shape == (*blocks.shape[:4], 2 * block) and packed.dtype == np.uint8
    flat = blocks.reshape(*blocks.shape[:4], 4 * block)
    np.testing.assert_array_equal(_nibble(packed, high=False), flat[..., :2 * block])
    np.testing.assert_array_equal(_nibble(packed, high=True), flat[..., 2 * block:])


def test_conv_weight_blocks_hold_block_channels_times_four_inputs():
    weight = np.arange(16 * 1 * 1 * 8, dtype=np.int64).reshape(16, 1, 1, 8).astype(np.int8)
    blocks = packing.pack_weight(weight, 8)
    assert blocks.shape == (2, 1, 1, 2, 8, 4)
    assert blocks[1, 0, 0, 1, 3, 2] == weight[8 + 3, 0, 0, 4 + 2]


@pytest.mark.parametrize("channels", [32, 48, 144])
def test_depthwise_weights_pair_sixteen_channel_blocks(channels):
    rng = np.random.default_rng(channels)
    weight = _weights(rng, 3, 3, channels)
    packed = depthwise.pack_weight_int4(weight)
    pairs = -(-channels // 32)
    assert packed.shape == (3, 3, 16 * pairs) and packed.dtype == np.uint8
    decoded = np.zeros((3, 3, 32 * pairs), np.int8)
    for p in range(pairs):
        decoded[..., 32 * p:32 * p + 16] = _nibble(packed[..., 16 * p:16 * p + 16], high=False)
        decoded[..., 32 * p + 16:32 * p + 32] = _nibble(packed[..., 16 * p:16 * p + 16], high=True)
    np.testing.assert_array_equal(decoded[..., :channels], weight)
    assert not decoded[..., channels:].any()


def test_requantize_table_layout():
    rq = requantize.Requantize(zero_point=3, lo=0, hi=255, dtype="uint8", shift=38, ties=False)
    table = requantize.requantize_table(np.array([5, -6, 7]), np.array([100, 200, 300]), rq, 3, 8)
    assert table.dtype == np.int32 and table.shape == (2 * 8 + 4,)
    np.testing.assert_array_equal(table[:8], [5, -6, 7, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(table[8:16], [100, 200, 300, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(table[16:], [3, 0, 255, 38])


@pytest.mark.parametrize("block", [16, 8])
def test_conv_weights_two_bits_four_quarter_blocks_per_byte_plus_channel_offsets(block):
    rng = np.random.default_rng(2)
    offsets = rng.integers(-3, 1, 2 * block).astype(np.int8)          # zero point folded in: [-3, 0]
    weight = (offsets[:, None, None, None] + rng.integers(0, 4, (2 * block, 1, 1, 8))).astype(np.int8)
    assert packing.fits_int2(weight) and not packing.fits_int2(weight * 2)
    packed, stored_offsets = packing.pack_weight_int2(weight, block)
    blocks = packing.pack_weight(weight, block)
    assert packed.shape == (*blocks.shape[:4], block) and packed.dtype == np.uint8
    channel = np.repeat(np.arange(2 * block).reshape(2, 1, 1, 1, block, 1), 4, axis=5).reshape(2, 1, 1, 1, 4 * block)
    fields = np.concatenate([(packed >> (2 * q)) & 3 for q in range(4)], axis=-1).astype(np.int8)
    decoded = fields + stored_offsets[np.broadcast_to(channel, fields.shape)]
    np.testing.assert_array_equal(decoded, blocks.reshape(*blocks.shape[:4], 4 * block))


def test_avx2_weight_blocks_hold_two_input_pairs():
    """[Co/16, KH, KW, Ci/4, 2, 16, 2]: pair p, lane i, k is input channel 4c + 2p + k."""
    weight = np.random.default_rng(3).integers(-128, 128, (32, 3, 3, 8)).astype(np.int8)
    pairs = packing.pack_weight_pairs(weight)
    assert pairs.shape == (2, 3, 3, 2, 2, 16, 2) and pairs.flags.c_contiguous
    assert pairs[1, 2, 0, 1, 1, 5, 0] == weight[16 + 5, 2, 0, 4 + 2]
    assert pairs[0, 1, 1, 0, 0, 15, 1] == weight[15, 1, 1, 1]
