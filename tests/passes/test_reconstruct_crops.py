"""reconstruct-blocks with crops and its estimate: the crop reaches the blocks' training, a
cropped reconstruction still lowers the block output error, and the estimate is made first."""

from __future__ import annotations

import numpy as np
import pytest

import qcompiler
from qcompiler.blocks import ReconstructConfig
from graphs import ROOT

DATA = np.load(ROOT / "models" / "fashion_mnist_subset.npz")


def _quantized(crop):
    return qcompiler.quantize(ROOT / "models" / "fashion_resnet8.onnx", {"input": DATA["input"][:96]}, "w4a4",
                              progress=False, reconstruct=ReconstructConfig(iters=60, act_iters=15, samples=96,
                                                                            crop=crop))


def test_a_cropped_reconstruction_still_lowers_the_block_error():
    cropped, whole = _quantized(6), _quantized(None)
    estimate = cropped.reconstruction_estimate
    # the stem and two residual blocks are convolutional; the last one ends in a global pool and Flatten
    assert [text.split(":")[0] for text in estimate.cropped] == ["block0", "block1", "block2"]
    assert "8x8 of 28x28" in estimate.cropped[0]
    assert 0 < estimate.seconds < estimate.uncropped
    assert whole.reconstruction_estimate.cropped == [] and "no crops" in whole.reconstruction_setting()
    first, first_whole = cropped.reconstruction[0], whole.reconstruction[0]
    assert first.loss_nearest == pytest.approx(first_whole.loss_nearest)  # the same block and inputs ...
    assert first.loss_learned != first_whole.loss_learned  # ... trained on crops, not on whole samples
    for report in cropped.reconstruction[1:3]:  # the cropped 4-bit blocks
        assert report.loss_learned < report.loss_nearest, report
    assert "with crops on 3 blocks" in cropped.reconstruction_setting()


def test_bad_crop_values_are_refused():
    for bad in (0, -3, "big", 2.5):
        with pytest.raises(ValueError, match="crop must be a positive int, 'auto' or None"):
            ReconstructConfig(crop=bad)
