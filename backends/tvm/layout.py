"""The pass qcompiler.nhwc-layout: Relax's ConvertLayout puts every convolution (and, through
layout inference, the requantization, residual adds and pooling around it) in NHWC, so that
input channels are contiguous for the kernels; constant weights are re-laid out by constant
folding. Name hints survive it, which is how kernel selection finds the integer rewrite's
recorded layers afterwards."""

from __future__ import annotations

import logging

import tvm
from tvm import relax

logger = logging.getLogger(__name__)


def to_nhwc(mod: tvm.IRModule) -> tvm.IRModule:
    """The convolutions in NHWC (the kernels' layout). TVM's ConvertLayout cannot carry a
    layout through some ops (ShuffleNet's channel shuffle: a 5-D reshape and transpose);
    then the network stays NCHW, correct but without the int8 kernels, and a warning says so."""
    mod = relax.transform.CanonicalizeBindings()(mod)   # aliases would stop layout propagation
    try:
        mod = relax.transform.ConvertLayout({"relax.nn.conv2d": ["NHWC", "OHWI"]})(mod)
    except RuntimeError as exc:   # tvm.error.InternalError
        first_line = str(exc).strip().splitlines()[-1][:160]
        logger.warning("TVM could not convert this network to NHWC (%s): it is built in NCHW without "
                       "the int8 kernels, correct but slow", first_line)
    return relax.transform.FoldConstant()(mod)
