"""canonicalize: the clean-up every model gets before quantization, as one named pass."""

from __future__ import annotations

from qcompiler.ir import Model
from qcompiler.pass_infra import Pass, PassManager, PassResult
from qcompiler.passes.fold_constants import FoldConstants
from qcompiler.passes.fold_pad import FoldPad
from qcompiler.passes.fold_shapes import FoldShapes
from qcompiler.passes.matmul_add_to_gemm import MatMulAddToGemm
from qcompiler.passes.normalize_clip import NormalizeClip
from qcompiler.passes.remove_identity import RemoveIdentity
from qcompiler.passes.sum_to_add import SumToAdd
from qcompiler.registry import register


@register("canonicalize")
class Canonicalize(Pass):
    """fold-shapes, fold-constants, remove-identity, fold-pad, sum-to-add, matmul-add-to-gemm, normalize-clip, in that order.

    Shapes and constants are folded first so that the later rules see weights, biases, clip
    bounds and Reshape targets as constants whatever form the exporter wrote them in.
    """

    def call(self, model: Model) -> PassResult:
        steps = (FoldShapes(), FoldConstants(), RemoveIdentity(), FoldPad(), SumToAdd(), MatMulAddToGemm(),
                 NormalizeClip())
        return PassManager(steps)(model)
