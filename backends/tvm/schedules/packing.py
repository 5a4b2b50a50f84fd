"""Weights in the kernels' layout: int8 blocks [Co/16, KH, KW, Ci/4, 16, 4], 4-bit two to a
byte, 2-bit four to a byte with per-channel offsets, and the TE code that unpacks them inside
a kernel.
"""

from __future__ import annotations

import numpy as np


def pack_weight(weight_ohwi: np.ndarray, block: int = 16) -> np.ndarray:
    """[Co, KH, KW, Ci] int8 -> [Co/B, KH, KW, Ci/4, B, 4] for B = `block` output channels
    (Co, Ci already multiples of B, 4)."""
    co, kh, kw, ci = weight_ohwi.shape
    return np.ascontiguousarray(weight_ohwi.reshape(co // block, block, kh, kw, ci // 4, 4).transpose(0, 2, 3, 4, 1, 5))


def pack_weight_int4(weight_ohwi: np.ndarray, block: int = 16) -> np.ndarray:
    """Weights in [-8, 7] two to a byte: [Co/B, KH, KW, Ci/4, 2B] uint8. Byte j of a B x 4
    block holds element j in its low nibble and element j + 2B in its high nibble, so that each
    half of the block decodes from one contiguous load with two shifts (_unpacked_int4)."""
    blocks = pack_weight(weight_ohwi, block).astype(np.int16)
    flat = blocks.reshape(*blocks.shape[:4], 4 * block) & 0xF
    return (flat[..., :2 * block] | (flat[..., 2 * block:] << 4)).astype(np.uint8)


def unpacked_int4(tvm, te, packed, co: int, kh: int, kw: int, ci: int, block: int):
    """The int8 weight blocks decoded from nibbles (pack_weight_int4), sign-extended by shifts
    in int8: the low nibble by (b << 4) >> 4, the high one by b >> 4."""
    half, four = 2 * block, tvm.tirx.const(4, "int8")

    def decode(a, p, q, c, i, k):
        index = i * 4 + k
        byte = packed[a, p, q, c, index % half].astype("int8")
        return tvm.tirx.if_then_else(index < half, (byte << four) >> four, byte >> four)

    return te.compute((co // block, kh, kw, ci // 4, block, 4), decode, name="unpack")


def pack_weight_int2(weight_ohwi: np.ndarray, block: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Weights spanning at most 4 consecutive values per output channel (the 2-bit presets,
    zero point folded in) four to a byte: ([Co/B, KH, KW, Ci/4, B] uint8, offsets int8[Co]),
    each weight its channel's offset + a 2-bit field; byte j of a B x 4 block holds elements
    j, j + B, j + 2B, j + 3B in bits 0-1, 2-3, 4-5, 6-7 (a quarter block per shift)."""
    offsets = weight_ohwi.reshape(weight_ohwi.shape[0], -1).min(axis=1).astype(np.int8)
    fields = pack_weight((weight_ohwi - offsets[:, None, None, None]).astype(np.int8), block).astype(np.uint8)
    flat = fields.reshape(*fields.shape[:4], 4 * block)
    quarters = [flat[..., q * block:(q + 1) * block] << (2 * q) for q in range(4)]
    return (quarters[0] | quarters[1] | quarters[2] | quarters[3]).astype(np.uint8), offsets


def fits_int2(weight_ohwi: np.ndarray) -> bool:
    """Whether every output channel's weights span at most 4 consecutive values."""
    flat = weight_ohwi.reshape(weight_ohwi.shape[0], -1).astype(np.int16)
    return bool(np.all(flat.max(axis=1) - flat.min(axis=1) <= 3))


def unpacked_int2(te, packed, offsets, co: int, kh: int, kw: int, ci: int, block: int):
    """The int8 weight blocks decoded from pack_weight_int2's 2-bit fields plus their channel's offset."""
    def decode(a, p, q, c, i, k):
        index = i * 4 + k
        field = (packed[a, p, q, c, index % block] >> (2 * (index // block)).astype("uint8")) & 3
        return field.astype("int8") + offsets[a * block + i]

    return te.compute((co // block, kh, kw, ci // 4, block, 4), decode, name="unpack")


def pack_weight_pairs(weight_ohwi: np.ndarray, block: int = 16) -> np.ndarray:
    """[Co, KH, KW, Ci] int8 -> [Co/B, KH, KW, Ci/4, 2, B, 2]: each B x 4 block as two B x 2
    halves (input channels 0-1, then 2-3), the layout of the AVX2 kernels' vpmaddwd pairs."""
    blocks = pack_weight(weight_ohwi, block)
    return np.ascontiguousarray(blocks.reshape(*blocks.shape[:5], 2, 2).transpose(0, 1, 2, 3, 5, 4, 6))
