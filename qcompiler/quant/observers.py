"""Range observers: they watch a tensor's values and choose [lo, hi]. One registry,
`OBSERVERS`, serves activations and weights.

Activations stream. `minmax` and `ema` need one pass; the histogram observers (`percentile`,
`lp`, `kl`) need two: the first finds the value range, the second fills a fixed histogram of
`BINS` bins over it, so memory stays one histogram per tensor whatever the number of batches.
Weights are whole at hand: an observer that serves them (`minmax`, `lp`) chooses each output
channel's range exactly from the values (`weight_range`), no histogram. `lp` searches the
clipping range that minimizes the L^p error with p = 2.4 (BRECQ's); it was called `mse`, and
that name is still accepted (`canonical_name`).
"""

from __future__ import annotations

import numpy as np

import logging

from qcompiler.quant.maths import fake_quantize, params_from_range
from qcompiler.quant.spec import QuantSpec

log = logging.getLogger(__name__)

BINS = 2048
#: Clipping ratios tried by the Lp search: 1.0 down to 0.2 (BRECQ searches 100 steps the same way).
CLIP_RATIOS = np.linspace(1.0, 0.2, 81)


class Observer:
    """Per-tensor activation observer. Subclasses choose the range from what they saw."""

    name = ""
    two_pass = False
    serves_weights = False   # whether `weight_rows` chooses weight ranges too

    @classmethod
    def weight_rows(cls, rows: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        """[lo, hi] of each row (output channel) of a weight; the whole range unless overridden."""
        return rows.min(axis=1).astype(np.float64), rows.max(axis=1).astype(np.float64)

    def __init__(self) -> None:
        self.lo = np.inf
        self.hi = -np.inf
        self.count = 0

    def observe(self, x: np.ndarray) -> None:
        """First pass: running min and max of every batch."""
        if x.size == 0:
            return
        self.lo = min(self.lo, float(x.min()))
        self.hi = max(self.hi, float(x.max()))
        self.count += x.size

    def observe_again(self, x: np.ndarray) -> None:
        """Second pass (two-pass observers only)."""

    def range(self, spec: QuantSpec) -> tuple[float, float]:
        if self.count == 0:
            raise ValueError("observer saw no values")
        return self.lo, self.hi


class MinMaxObserver(Observer):
    """The whole observed range: no clipping, no outlier left out."""

    name = "minmax"
    serves_weights = True


class EmaMinMaxObserver(Observer):
    """Exponential moving average of per-batch min and max (the whitepaper's choice for QAT)."""

    name = "ema"

    def __init__(self, momentum: float = 0.9) -> None:
        super().__init__()
        self.momentum = momentum
        self.ema: tuple[float, float] | None = None

    def observe(self, x: np.ndarray) -> None:
        super().observe(x)
        if x.size == 0:
            return
        batch = (float(x.min()), float(x.max()))
        m = self.momentum
        self.ema = batch if self.ema is None else (m * self.ema[0] + (1 - m) * batch[0], m * self.ema[1] + (1 - m) * batch[1])

    def range(self, spec: QuantSpec) -> tuple[float, float]:
        super().range(spec)
        return self.ema


class HistogramObserver(Observer):
    """Two passes: min/max, then a histogram over [min(lo, 0), max(hi, 0)]."""

    two_pass = True

    def __init__(self, bins: int = BINS) -> None:
        super().__init__()
        self.bins = bins
        self.counts: np.ndarray | None = None
        self.edges: np.ndarray | None = None
        self.zeros = 0  # exact zeros (half of a ReLU output): representable at any range

    def observe_again(self, x: np.ndarray) -> None:
        if self.edges is None:
            lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
            if hi <= lo:
                hi = lo + 1.0
            self.edges = np.linspace(lo, hi, self.bins + 1)
            self.counts = np.zeros(self.bins, np.int64)
        self.counts += np.histogram(x, bins=self.edges)[0]
        self.zeros += int(np.count_nonzero(x == 0))

    @property
    def centers(self) -> np.ndarray:
        return (self.edges[:-1] + self.edges[1:]) / 2

    def range(self, spec: QuantSpec) -> tuple[float, float]:
        super().range(spec)
        if self.counts is None:
            raise ValueError("the histogram observer needs its second pass")
        if self.hi <= self.lo:
            return self.lo, self.hi
        return self.choose(spec)

    def choose(self, spec: QuantSpec) -> tuple[float, float]:
        raise NotImplementedError


class PercentileObserver(HistogramObserver):
    """Clip the `percentile`-th percentile on each side (99.99: one value in 10,000 is clipped)."""

    name = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = BINS) -> None:
        super().__init__(bins)
        self.percentile = percentile

    def choose(self, spec: QuantSpec) -> tuple[float, float]:
        cdf = np.cumsum(self.counts) / self.counts.sum()
        tail = 1.0 - self.percentile / 100.0
        lo_bin = int(np.searchsorted(cdf, tail, side="right"))
        hi_bin = int(np.searchsorted(cdf, 1.0 - tail, side="left"))
        lo = self.lo if self.lo >= 0 else min(float(self.edges[lo_bin]), 0.0)
        hi = float(self.edges[min(hi_bin + 1, self.bins)])
        return max(lo, self.lo), min(hi, self.hi)


class LpObserver(HistogramObserver):
    """The range [r lo, r hi], r in CLIP_RATIOS, that minimizes sum |x - fakequant(x)|^p.

    p = 2 is the MSE search; BRECQ initializes with p = 2.4, which weighs outliers more.
    """

    name = "lp"
    serves_weights = True
    P = 2.4

    def __init__(self, p: float = P, bins: int = BINS) -> None:
        super().__init__(bins)
        self.p = p

    @classmethod
    def weight_rows(cls, rows: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = super().weight_rows(rows, spec)
        return _lp_search_rows(rows, lo, hi, spec, cls.P)

    def choose(self, spec: QuantSpec) -> tuple[float, float]:
        return lp_search(self.centers, self.counts.astype(np.float64), self.lo, self.hi, spec, self.p)


class KlObserver(HistogramObserver):
    """TensorRT's entropy calibration: the threshold T minimizing KL(P || Q) between the
    histogram of |x| clipped at T and its quantization to the spec's levels.

    Exact zeros are left out of the histogram: they are represented exactly at any threshold,
    and kept in, the zero spike of a ReLU output (often half the values) is smeared over its
    merged bin in Q, which makes KL prefer thresholds far too small (measured: ResNet-8 W8A8
    fell to 63.9% top-1 with them, from 92.4%)."""

    name = "kl"

    def choose(self, spec: QuantSpec) -> tuple[float, float]:
        magnitudes, counts = self._folded()
        nonneg = self.lo >= 0
        target = spec.levels if nonneg else spec.levels // 2
        threshold = kl_threshold(counts, magnitudes[1] - magnitudes[0], target)
        return (0.0 if nonneg else max(self.lo, -threshold)), min(self.hi, threshold)

    def _folded(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of |x| over [0, max|x|] with the same bin width (negative half folded over)."""
        width = self.edges[1] - self.edges[0]
        top = max(abs(self.edges[0]), abs(self.edges[-1]))
        n = int(np.ceil(top / width))
        folded = np.zeros(n, np.float64)
        index = np.minimum((np.abs(self.centers) / width).astype(int), n - 1)
        np.add.at(folded, index, self.counts)
        zero_bin = min(int(abs(self.edges[0]) / width), n - 1) if self.edges[0] < 0 else 0
        folded[zero_bin] = max(folded[zero_bin] - self.zeros, 0)
        return np.arange(n) * width, folded


def lp_search(values: np.ndarray, weights: np.ndarray, lo: float, hi: float, spec: QuantSpec, p: float) -> tuple[float, float]:
    """The clipping ratio r minimizing sum_i weights_i |v_i - fakequant(v_i; [r lo, r hi])|^p."""
    best, best_error = (lo, hi), np.inf
    for ratio in CLIP_RATIOS:
        params = params_from_range(np.float32(lo * ratio), np.float32(hi * ratio), spec)
        error = float(np.sum(weights * np.abs(values - fake_quantize(values.astype(np.float32), params, spec)) ** p))
        if error < best_error:
            best, best_error = (lo * ratio, hi * ratio), error
    return best


def kl_threshold(counts: np.ndarray, bin_width: float, target: int, max_candidates: int = 128) -> float:
    """TensorRT's algorithm on a histogram of magnitudes; tries at most `max_candidates` thresholds."""
    n = len(counts)
    if n <= target:
        return n * bin_width
    step = max(1, (n - target) // max_candidates)
    best_i, best_kl = n, np.inf
    for i in range(target, n + 1, step):
        reference = counts[:i].copy()
        reference[i - 1] += counts[i:].sum()
        groups = np.array_split(np.arange(i), target)
        expanded = np.zeros(i)
        for idx in groups:
            chunk = counts[idx]
            nonzero = chunk > 0
            if nonzero.any():
                expanded[idx[nonzero]] = chunk.sum() / nonzero.sum()
        kl = _kl(reference, expanded)
        if kl < best_kl:
            best_i, best_kl = i, kl
    return best_i * bin_width


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    p = p / p.sum()
    q_sum = q.sum()
    if q_sum == 0:
        return np.inf
    q = q / q_sum
    mask = p > 0
    if np.any(q[mask] == 0):
        return np.inf
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))


OBSERVERS: dict[str, type[Observer]] = {
    cls.name: cls for cls in (MinMaxObserver, EmaMinMaxObserver, PercentileObserver, LpObserver, KlObserver)
}
WEIGHT_OBSERVERS = tuple(name for name, cls in OBSERVERS.items() if cls.serves_weights)
#: Old names -> what they are called now (accepted with a deprecation note).
RENAMED = {"mse": "lp"}


def canonical_name(name: str) -> str:
    """An observer's current name: `mse` -> `lp` (with a note, once per call site's value)."""
    if name in RENAMED:
        log.warning("observer %r is now called %r (the Lp search with p = %s); the old name will go",
                    name, RENAMED[name], LpObserver.P)
        return RENAMED[name]
    return name


def make_observer(name: str) -> Observer:
    name = canonical_name(name)
    if name not in OBSERVERS:
        raise ValueError(f"unknown observer {name!r}; choose from {', '.join(OBSERVERS)}")
    return OBSERVERS[name]()


def weight_range(weight: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (along spec.axis) or per-tensor [lo, hi] of a weight, by its spec's observer."""
    observer = canonical_name(spec.observer)
    if observer not in WEIGHT_OBSERVERS:
        raise ValueError(f"weight observer must be one of {WEIGHT_OBSERVERS}, not {spec.observer!r}")
    w = weight.astype(np.float32)
    rows = w.reshape(1, -1) if spec.axis is None else np.moveaxis(w, spec.axis, 0).reshape(w.shape[spec.axis], -1)
    lo, hi = OBSERVERS[observer].weight_rows(rows, spec)
    if spec.axis is None:
        return lo[0], hi[0]
    return lo, hi


def _lp_search_rows(rows: np.ndarray, lo: np.ndarray, hi: np.ndarray, spec: QuantSpec, p: float):
    """`lp_search` for every row (channel) at once: one vectorized pass per clipping ratio."""
    row_spec = QuantSpec(spec.bits, spec.signed, spec.symmetric, spec.narrow, 0, spec.observer)
    best_lo, best_hi = lo.copy(), hi.copy()
    best_error = np.full(len(rows), np.inf)
    for ratio in CLIP_RATIOS:
        params = params_from_range((lo * ratio).astype(np.float32), (hi * ratio).astype(np.float32), row_spec)
        error = np.sum(np.abs(rows - fake_quantize(rows, params, row_spec)).astype(np.float64) ** p, axis=1)
        better = error < best_error
        best_error[better], best_lo[better], best_hi[better] = error[better], lo[better] * ratio, hi[better] * ratio
    return best_lo, best_hi
