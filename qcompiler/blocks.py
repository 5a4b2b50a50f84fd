"""What block reconstruction works on and reports: `Block` (from partition-blocks),
`ReconstructConfig` (BRECQ's settings) and `BlockReport` (per block, from reconstruct-blocks)."""

from __future__ import annotations

import dataclasses

#: How much partition-blocks puts in one block (see qcompiler.passes.partition_blocks).
GRANULARITIES = ("layer", "block", "stage", "net")
#: The bias learning rate --learn-bias sets (ReconstructConfig.bias_lr; measured in docs/brecq.md).
LEARNED_BIAS_LR = 1e-3
#: crop="auto": the output side trained on, where cropping at least halves a block's input area.
AUTO_CROP = 64
#: The largest share of the calibration samples the held-out guard may take from training.
MAX_HOLDOUT = 0.5
HOLDOUT_METRICS = ("mse", "kl")


@dataclasses.dataclass(frozen=True)
class Block:
    """Nodes reconstructed together: inputs read from before it, outputs read after it (or graph outputs)."""

    name: str
    nodes: tuple[str, ...]
    layers: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def describe(self) -> str:
        return (f"{self.name}: {len(self.layers)} layer(s) [{', '.join(self.layers)}] "
                f"{', '.join(self.inputs)} -> {', '.join(self.outputs)}")


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    """BRECQ's settings (the authors' defaults); `samples` bounds the cached calibration set."""

    granularity: str = "block"
    iters: int = 20000  # weight-rounding iterations per block
    #: Activation step-size iterations per block (0: keep the calibrated ones); None: a quarter
    #: of `iters`, the authors' ratio (5000 for their 20000), the same in the CLI and in Python.
    act_iters: int | None = None
    batch_size: int = 32
    lr: float = 1e-3
    act_lr: float = 4e-4
    #: > 0: also learn the biases of the block's quantized layers, with both phases (Adam, cosine
    #: decay from this rate), as AdaQuant does; they then replace bias correction (0: BRECQ's fixed biases).
    bias_lr: float = 0.0
    reg_weight: float = 0.01
    beta: tuple[float, float] = (20.0, 2.0)
    warmup: float = 0.2
    fisher: bool = False
    qdrop: float = 0.0  # > 0: QDrop, rounding and step sizes learned together, activations dropped with this p
    samples: int = 1024
    cache_bytes: int = 2 * 2**30
    seed: int = 0
    #: Train convolutional blocks on random spatial crops: the side, in output positions, of the
    #: region compared (the inputs carry the halo it reads); "auto": AUTO_CROP where that at least halves
    #: a block's input area; None: whole samples (qcompiler.sim.crops, docs/brecq.md).
    crop: int | str | None = "auto"
    #: > 0: hold out this share of the calibration samples, the last in file order: a block keeps
    #: what a phase learned only where it does not raise the network's output error on them, so
    #: that a small or narrow calibration set is not fitted at the expense of other inputs (0: no guard).
    holdout: float = 0.0
    #: what the guard measures on the held-out samples: "mse", the squared error of every network
    #: output against the float network's; "kl", the KL divergence of the first output's softmax
    #: from the float one's (a classifier's logits: what decides its top-1, not their scale).
    holdout_metric: str = "mse"

    def __post_init__(self) -> None:
        if self.act_iters is None:
            object.__setattr__(self, "act_iters", self.iters // 4)
        if not 0.0 <= self.holdout <= MAX_HOLDOUT:
            raise ValueError(f"holdout must be a share from 0 to {MAX_HOLDOUT}, not {self.holdout!r}")
        if self.holdout_metric not in HOLDOUT_METRICS:
            raise ValueError(f"holdout_metric must be one of {', '.join(HOLDOUT_METRICS)}, not {self.holdout_metric!r}")
        if not (self.crop is None or self.crop == "auto" or (isinstance(self.crop, int) and self.crop > 0)):
            raise ValueError(f"crop must be a positive int, 'auto' or None, not {self.crop!r}")

    def describe(self) -> str:
        extras = (", Fisher" if self.fisher else "") + (f", QDrop {self.qdrop}" if self.qdrop else "") + \
            (", biases learned" if self.bias_lr else "") + \
            (f", {self.holdout:.0%} of the samples held out as a guard"
             + (" (KL)" if self.holdout_metric == "kl" else "") if self.holdout else "")
        return f"BRECQ {self.granularity}, {self.iters}+{self.act_iters} iterations per block{extras}"


@dataclasses.dataclass
class BlockReport:
    """What reconstruction did to one block: its loss before (nearest rounding) and after, and time;
    with a held-out guard (ReconstructConfig.holdout) the network's output error on the held-out
    samples before and after the block, and the phases whose result was dropped because it raised it."""

    block: Block
    loss_nearest: float
    loss_learned: float
    seconds: float
    curve: list[float]
    held_nearest: float | None = None
    held_learned: float | None = None
    dropped: tuple[str, ...] = ()
