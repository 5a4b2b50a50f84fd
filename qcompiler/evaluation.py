"""Float against quantized, both in onnxruntime: accuracy, agreement, KL, SQNR, per tensor too."""

from __future__ import annotations

import dataclasses

import numpy as np

from qcompiler.data import Dataset
from qcompiler.executor import session
from qcompiler.ir import Model
from qcompiler.progress import Progress
from qcompiler.quant.annotation import quantized_weight, weight_values
from qcompiler.quant.maths import sqnr_db


@dataclasses.dataclass(frozen=True)
class Evaluation:
    samples: int
    float_top1: float | None  # with labels only
    quant_top1: float | None
    agreement: float  # share of samples whose top-1 class is the same
    kl: float  # mean KL(softmax(float) || softmax(quantized)), nats
    sqnr_db: float  # of the first output, over all samples

    @property
    def drop(self) -> float | None:
        return None if self.float_top1 is None else self.float_top1 - self.quant_top1

    def __str__(self) -> str:
        top1 = "" if self.float_top1 is None else (f"top-1 float {self.float_top1:.4f}, quantized {self.quant_top1:.4f} "
                                                  f"(drop {100 * self.drop:+.2f} points); ")
        return (f"{self.samples} samples: {top1}agreement {self.agreement:.4f}; KL {self.kl:.5f} nats; "
                f"SQNR {self.sqnr_db:.1f} dB")


@dataclasses.dataclass(frozen=True)
class TensorError:
    name: str
    role: str  # weight or activation
    spec: str
    sqnr_db: float
    lo: float
    hi: float


def evaluate(float_model: Model, quant_model: Model, data: Dataset, batch_size: int = 64, progress: bool = True) -> Evaluation:
    # The QDQ model as written (optimizations off): onnxruntime's QLinear kernels saturate on AVX2-only CPUs.
    fp, q = session(float_model), session(quant_model, optimize=False)
    logits_fp, logits_q = [], []
    bar = Progress("evaluating", -(-data.count // batch_size), progress)
    for feeds in data.batches(batch_size):
        logits_fp.append(fp.run(None, feeds)[0])
        logits_q.append(q.run(None, feeds)[0])
        bar.advance()
    bar.close()
    a, b = np.concatenate(logits_fp), np.concatenate(logits_q)
    flat_a, flat_b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    top_a, top_b = flat_a.argmax(1), flat_b.argmax(1)
    labels = data.labels[:len(a)] if data.labels is not None else None
    return Evaluation(
        samples=len(a),
        float_top1=None if labels is None else float((top_a == labels).mean()),
        quant_top1=None if labels is None else float((top_b == labels).mean()),
        agreement=float((top_a == top_b).mean()),
        kl=float(np.mean(kl_rows(flat_a, flat_b))),
        sqnr_db=sqnr_db(a, b),
    )


def kl_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(softmax(a) || softmax(b)) per row of two [N, classes] logit arrays."""
    log_p, log_q = _log_softmax(a.astype(np.float64)), _log_softmax(b.astype(np.float64))
    return np.sum(np.exp(log_p) * (log_p - log_q), axis=1)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def tensor_errors(annotated: Model, quant_model: Model, dequantized: dict[str, str], data: Dataset,
                  float_model: Model | None = None) -> list[TensorError]:
    """SQNR of every quantized tensor against its float counterpart: weights in numpy, activations
    by running both models (with the tensors exposed) on `data`, a few batches at most. The float
    activations come from `float_model` (default: `annotated`, whose biases correct-bias may have changed)."""
    rows = []
    for name, w in weight_values(annotated).items():
        tq = annotated.quant[name]
        quantized = quantized_weight(w, tq)
        rows.append(TensorError(name, "weight", tq.spec.describe(), sqnr_db(w, quantized),
                                float(w.min()), float(w.max())))
    names = [n for n, tq in annotated.quant.items() if tq.role == "activation" and n in dequantized]
    if names:
        fp = session(float_model or annotated, extra_outputs=names)
        q = session(quant_model, extra_outputs=[dequantized[n] for n in names], optimize=False)
        sums = {n: [0.0, 0.0] for n in names}
        for feeds in data.batches(16):
            for n, a, b in zip(names, fp.run(names, feeds), q.run([dequantized[n] for n in names], feeds)):
                sums[n][0] += float(np.sum(np.square(a, dtype=np.float64)))
                sums[n][1] += float(np.sum(np.square(a.astype(np.float64) - b)))
        for n in names:
            tq = annotated.quant[n]
            signal, noise = sums[n]
            value = float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-300) / noise)
            scale, zp = float(tq.params.scale), int(tq.params.zero_point)
            rows.append(TensorError(n, "activation", tq.spec.describe(), value,
                                    (tq.spec.qmin - zp) * scale, (tq.spec.qmax - zp) * scale))
    return rows
