"""What happens to a network's logits after training: class-prior adjustment and temperature.

Two post-hoc corrections, both fitted on the validation split only (FER2013Valid; never on
test), both folded into the exported graph (`exporters.classifier.PostHoc`) so `probs` means
the same wherever it is read — app, CSV, API, evaluation:

1. **Logit adjustment** (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021,
   post-hoc form): `logits - tau * log(prior)`. A network trained on FERPlus learns its class
   prior (neutral and happiness are 60 % of the faces, contempt and disgust under 1 % each), so
   its arg-max almost never says contempt or disgust; subtracting the log prior moves the
   decision toward the balanced error. tau = 0 is the plain network, tau = 1 the balanced-error
   Bayes rule. We pick tau on validation by the largest accuracy + macro-F1 (both in %): one
   number that pays for rare-class recall and charges for lost accuracy. Post-hoc rather than
   in the loss, because one training run then serves every trade-off, and because the
   networks compute their own losses (the paper shows the two forms within a point).
2. **Temperature scaling** (Guo et al., "On calibration of modern neural networks", ICML 2017):
   `softmax(adjusted / T)` with the T that minimises validation NLL. It changes no arg-max,
   only how sure the probabilities are, so accuracy is untouched and ECE falls. The NLL is
   taken over the clean validation faces (half the weight) *and* their copies under occlufer's
   occluders and camera degradations (the other half, each kind equally), as Tomani et al.
   ("Post-hoc uncertainty calibration for domain drift scenarios", CVPR 2021) do: a T fitted on
   clean faces alone sharpens these networks (trained on vote distributions or with label
   smoothing, they are under-confident on clean faces) and so makes them confidently wrong
   once a mask or a blur arrives, which is the case occlufer exists for. Measured on all twelve
   networks in BENCHMARKS.md ("Calibration under occlusion"); the copies are built once from
   the validation split with their own seed (`training.occlusion.valid_copies`).

`expected_calibration_error` is the standard 15-bin, equal-width ECE on the top-class
confidence; `reliability_diagram` draws it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: share of a temperature fit's weight on clean faces; the rest goes to their shifted copies
CLEAN_WEIGHT = 0.5
TAU_GRID = tuple(round(t, 2) for t in np.arange(0.0, 1.51, 0.05))
ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def macro_f1(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean F1 over the classes present in `labels` (percent)."""
    scores = []
    for c in range(num_classes):
        support = int((labels == c).sum())
        if support == 0:
            continue
        tp = int(((pred == c) & (labels == c)).sum())
        predicted = int((pred == c).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support
        scores.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
    return float(np.mean(scores) * 100.0) if scores else 0.0


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0,
        weights: np.ndarray | None = None) -> float:
    """Mean negative log-likelihood of `labels` under softmax(logits / T); `weights` per face
    (normalised here) let several sets count equally whatever their sizes."""
    z = logits / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_probs = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    picked = -log_probs[np.arange(len(labels)), labels]
    if weights is None:
        return float(picked.mean())
    return float(np.sum(picked * weights) / np.sum(weights))


def fit_temperature(logits: np.ndarray, labels: np.ndarray,
                    weights: np.ndarray | None = None) -> float:
    """The T > 0 minimising (weighted) NLL: golden-section search on log T in
    [log 0.2, log 10] (NLL is unimodal in T for fixed logits)."""
    lo, hi = np.log(0.2), np.log(10.0)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0

    def loss(log_t: float) -> float:
        return nll(logits, labels, float(np.exp(log_t)), weights)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return float(np.exp((lo + hi) / 2.0))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray,
                               bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE (percent) of the top-class confidence, with the per-bin table for the diagram."""
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    rows, ece = [], 0.0
    for k in range(bins):
        inside = (confidence > edges[k]) & (confidence <= edges[k + 1])
        if k == 0:
            inside |= confidence == 0.0
        count = int(inside.sum())
        if count:
            acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
            ece += count / len(labels) * abs(acc - conf)
        else:
            acc = conf = None
        rows.append({"lo": float(edges[k]), "hi": float(edges[k + 1]), "count": count,
                     "accuracy": acc, "confidence": conf})
    return {"ece": ece * 100.0, "bins": rows,
            "mean_confidence": float(confidence.mean() * 100.0) if len(labels) else None}


def reliability_diagram(ece: dict[str, Any], path: Path, title: str) -> Path:
    """Bars of accuracy per confidence bin against the diagonal, with the ECE in the title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in ece["bins"] if r["count"]]
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    ax.plot([0, 1], [0, 1], "--", color="0.5", lw=1, label="perfect calibration")
    ax.bar([(r["lo"] + r["hi"]) / 2 for r in rows], [r["accuracy"] for r in rows],
           width=1.0 / len(ece["bins"]), edgecolor="black", color="#4c72b0", alpha=0.85,
           label="accuracy in bin")
    ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], "o", ms=3,
            color="#dd8452", label="(mean confidence, accuracy)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {ece['ece']:.2f} %", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


@dataclass
class Calibration:
    """The fitted post-hoc correction and what it did on validation."""

    tau: float
    temperature: float
    log_prior: list[float]
    prior_source: str
    #: one row per tau tried: accuracy, macro-F1, per-class recall on validation
    tau_table: list[dict[str, Any]] = field(default_factory=list)
    valid: dict[str, Any] = field(default_factory=dict)  # before / after: acc, F1, NLL, ECE

    @property
    def logit_bias(self) -> list[float]:
        return [-self.tau * v for v in self.log_prior]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "logit_bias": self.logit_bias}


def class_prior(train_soft: np.ndarray | None, train_labels: np.ndarray,
                num_classes: int) -> np.ndarray:
    """The training prior the network learnt: the mean target distribution (the vote
    distributions under soft labels, else the label frequencies), floored so log is finite."""
    if train_soft is not None:
        prior = np.asarray(train_soft, np.float64).mean(axis=0)
    else:
        prior = np.bincount(train_labels, minlength=num_classes).astype(np.float64)
    prior = np.maximum(prior, 1e-4)
    return prior / prior.sum()


def shift_weights(sizes: Sequence[int]) -> np.ndarray:
    """Per-face weights for a temperature fitted on clean validation faces (the first set) and
    their shifted copies (the rest): `CLEAN_WEIGHT` on the clean set, the remainder shared
    equally by the shifted sets, whatever their sizes."""
    if len(sizes) < 2:
        return np.full(sizes[0], 1.0 / sizes[0]) if sizes else np.zeros(0)
    shares = [CLEAN_WEIGHT] + [(1.0 - CLEAN_WEIGHT) / (len(sizes) - 1)] * (len(sizes) - 1)
    return np.concatenate([np.full(n, share / n) for n, share in zip(sizes, shares)])


def fit_calibration(logits: np.ndarray, labels: np.ndarray, prior: np.ndarray,
                    classes: tuple[str, ...], prior_source: str,
                    adjust: bool = True,
                    shifted: Sequence[tuple[np.ndarray, np.ndarray]] = ()) -> Calibration:
    """Choose tau (if `adjust`) on the clean validation logits, then T on them and on
    `shifted` (logits, labels) of the same faces occluded or degraded, if given (module
    docstring, step 2)."""
    logits = np.asarray(logits, np.float64)
    labels = np.asarray(labels)
    log_prior = np.log(prior)
    table = []
    for tau in (TAU_GRID if adjust else (0.0,)):
        pred = (logits - tau * log_prior).argmax(axis=1)
        recall = {c: (float((pred[labels == i] == i).mean() * 100.0)
                      if (labels == i).any() else None) for i, c in enumerate(classes)}
        table.append({"tau": tau, "accuracy": float((pred == labels).mean() * 100.0),
                      "macro_f1": macro_f1(pred, labels, len(classes)), "recall": recall})
    best = max(table, key=lambda r: (r["accuracy"] + r["macro_f1"], -r["tau"]))
    tau = float(best["tau"])
    adjusted = logits - tau * log_prior
    parts = [(adjusted, labels)] + [(np.asarray(z, np.float64) - tau * log_prior, np.asarray(y))
                                    for z, y in shifted]
    temperature = fit_temperature(np.concatenate([z for z, _ in parts]),
                                  np.concatenate([y for _, y in parts]),
                                  shift_weights([len(y) for _, y in parts]))
    before = softmax(logits)
    after = softmax(adjusted / temperature)
    valid = {
        "before": {"accuracy": table[0]["accuracy"], "macro_f1": table[0]["macro_f1"],
                   "nll": nll(logits, labels), "ece": expected_calibration_error(before,
                                                                               labels)["ece"]},
        "after": {"accuracy": best["accuracy"], "macro_f1": best["macro_f1"],
                  "nll": nll(adjusted, labels, temperature),
                  "ece": expected_calibration_error(after, labels)["ece"]},
        "n": int(len(labels)),
    }
    if shifted:
        z_shift = np.concatenate([z for z, _ in parts[1:]])
        y_shift = np.concatenate([y for _, y in parts[1:]])
        valid["shifted"] = {
            "sets": len(shifted), "n": int(len(y_shift)),
            "ece_before": expected_calibration_error(softmax(z_shift), y_shift)["ece"],
            "ece_after": expected_calibration_error(softmax(z_shift / temperature), y_shift)["ece"],
        }
    return Calibration(tau=tau, temperature=temperature, log_prior=[float(v) for v in log_prior],
                       prior_source=prior_source, tau_table=table, valid=valid)
