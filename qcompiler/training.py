"""What quantization-aware training works on and reports: `QILConfig` (learned intervals, Jung et
al. 2019), `QATConfig` (the whitepaper's fake-quant fine-tuning) and `TrainReport` (from the
train-quant pass; qcompiler.passes.train_quant)."""

from __future__ import annotations

import dataclasses

#: On how many training samples (the first of those training used) QIL activations' shares are measured.
MEASURED_SAMPLES = 256

#: How QAT keeps activation ranges: learned step sizes (LSQ) or an exponential moving average.
RANGE_MODES = ("lsq", "ema")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings shared by both methods. `labels`: cross-entropy against the data's `labels` array;
    otherwise distillation (KL from the float model's outputs). `progressive`: bit widths trained
    in turn, each stage starting from the last; the last must be the preset's."""

    method: str = "qil"
    epochs: int = 1
    batch_size: int = 64
    lr: float = 1e-4  # Adam on the float weights (cosine decay after a 5% warm-up)
    interval_lr: float = 5e-3  # Adam on intervals (relative to their start), gamma and step sizes
    labels: bool = False
    progressive: tuple[int, ...] = ()
    seed: int = 0
    #: The most training samples used (None: all); the rest of an epoch is not drawn.
    samples: int | None = None
    temperature: float = 1.0  # distillation's softmax temperature

    def describe(self) -> str:
        target = "cross-entropy on labels" if self.labels else "distillation from the float model"
        stages = f", progressive {'->'.join(map(str, self.progressive))} bits" if self.progressive else ""
        return (f"{self.method.upper()}{self._extra()}, {self.epochs} epoch(s) of batch {self.batch_size}, "
                f"lr {self.lr:g}/{self.interval_lr:g}, {target}{stages}, seed {self.seed}")

    def _extra(self) -> str:
        return ""


@dataclasses.dataclass(frozen=True)
class QILConfig(TrainConfig):
    """QIL: intervals (c, d) per weight channel and per activation, gamma per layer; joint (weights
    fine-tuned too) or `intervals_only` (weights frozen, as for a network without its training data)."""

    method: str = "qil"
    intervals_only: bool = False
    learn_gamma: bool = True
    gamma: float = 1.0  # the starting (or, unlearned, fixed) exponent of the weight transformer

    def _extra(self) -> str:
        gamma = "learned gamma" if self.learn_gamma else f"gamma {self.gamma:g}"
        return f" ({'intervals only' if self.intervals_only else 'joint'}, {gamma})"


@dataclasses.dataclass(frozen=True)
class QATConfig(TrainConfig):
    """QAT: per-channel fake-quant weights at their calibrated scales and fake-quant activations
    with straight-through gradients; the float weights are fine-tuned; activation ranges learned
    (LSQ) or tracked by EMA (`ranges`). BatchNorm is folded before training and its statistics
    thereby frozen, as the whitepaper advises."""

    method: str = "qat"
    ranges: str = "lsq"
    ema_momentum: float = 0.99

    def __post_init__(self) -> None:
        if self.ranges not in RANGE_MODES:
            raise ValueError(f"ranges must be one of {RANGE_MODES}")

    def _extra(self) -> str:
        return f" ({self.ranges.upper()} ranges)"


@dataclasses.dataclass
class LayerInterval:
    """A quantized weight after QIL: its bits, mean interval over channels, gamma, and how much of
    it is pruned (|w| < c - d) or clipped (|w| > c + d)."""

    name: str
    layer: str
    bits: int
    centre: float
    distance: float
    gamma: float
    pruned: float
    clipped: float


@dataclasses.dataclass
class ActivationInterval:
    """A QIL activation: its pruning threshold c - d (0 where it cannot be folded) and c + d, and
    the shares of its float values y (with the trained network, on MEASURED_SAMPLES training samples)
    that the interval prunes, 0 < y <= c - d (mapped to 0 by the interval, not by the float network),
    and clips, y > c + d; `zeros`: the share <= 0 already (a ReLU's zeros), also mapped to 0.
    See qcompiler.passes.train_quant.activation_shares."""

    name: str
    bits: int
    low: float
    high: float
    pruned: float
    clipped: float
    zeros: float


@dataclasses.dataclass
class TrainReport:
    """What training did: the loss per step, the held-out metric per epoch, intervals, time."""

    setting: str
    stages: list[int]
    losses: list[float]
    held_out: list[tuple[str, float]]  # (label such as "epoch 2 at 4 bits", metric)
    metric: str  # what held_out measures
    weights: list[LayerInterval]
    activations: list[ActivationInterval]
    seconds: float
    samples: int
    loss_before: float = 0.0  # the task loss on (at most 1024 of) the training samples, before training
    loss_after: float = 0.0
