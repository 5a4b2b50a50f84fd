"""Graph passes, and the API for writing your own (see docs/writing_passes.md).

    from qcompiler import ir
    from qcompiler.passes import Pass, PassResult, register

Importing this package registers the built-in passes under their names.
"""

from qcompiler.pass_infra import (
    DumpAfterInstrument,
    Instrument,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    TimingInstrument,
    VerifyInstrument,
)
from qcompiler.registry import get_pass, load_pass, register, registered_passes
from qcompiler.rewrite import Reject, RewriteRule, RuleSetPass

from qcompiler.passes.fold_constants import FoldConstants  # noqa: E402  (registers)
from qcompiler.passes.fold_shapes import FoldShapes  # noqa: E402
from qcompiler.passes.remove_identity import RemoveIdentity  # noqa: E402
from qcompiler.passes.sum_to_add import SumToAdd  # noqa: E402
from qcompiler.passes.fold_pad import FoldPad  # noqa: E402
from qcompiler.passes.matmul_add_to_gemm import MatMulAddToGemm  # noqa: E402
from qcompiler.passes.normalize_clip import NormalizeClip  # noqa: E402
from qcompiler.passes.canonicalize import Canonicalize  # noqa: E402
from qcompiler.passes.fold_batchnorm import FoldBatchNorm  # noqa: E402
from qcompiler.passes.fold_scale import FoldScale  # noqa: E402
from qcompiler.passes.annotate_quant import AnnotateQuant  # noqa: E402
from qcompiler.passes.assign_bit_widths import AssignBitWidths  # noqa: E402
from qcompiler.passes.calibrate_ranges import CalibrateRanges  # noqa: E402
from qcompiler.passes.untie_concats import UntieConcats  # noqa: E402
from qcompiler.passes.widen_activations import WidenActivations  # noqa: E402
from qcompiler.passes.correct_bias import CorrectBias  # noqa: E402
from qcompiler.passes.insert_qdq import InsertQDQ  # noqa: E402
from qcompiler.passes.partition_blocks import PartitionBlocks  # noqa: E402
from qcompiler.passes.reconstruct_blocks import ReconstructBlocks  # noqa: E402
from qcompiler.passes.train_quant import TrainQuant  # noqa: E402

#: What `qcompiler optimize` runs when no --passes are given.
DEFAULT_PIPELINE = ("canonicalize", "fold-batchnorm", "fold-scale")

__all__ = [
    "AnnotateQuant", "AssignBitWidths", "CalibrateRanges", "CorrectBias", "InsertQDQ", "PartitionBlocks", "ReconstructBlocks", "Canonicalize", "DEFAULT_PIPELINE", "DumpAfterInstrument", "FoldBatchNorm", "FoldConstants", "FoldPad", "FoldScale", "FoldShapes",
    "Instrument", "MatMulAddToGemm", "NormalizeClip", "Pass", "PassContext", "PassManager",
    "PassResult", "Reject", "RemoveIdentity", "RewriteRule", "RuleSetPass", "SumToAdd", "TimingInstrument", "TrainQuant", "UntieConcats",
    "WidenActivations",
    "VerifyInstrument", "get_pass", "load_pass", "register", "registered_passes",
]
