"""Score an exported occlusion + parsing ONNX the way it runs live (`app.pipeline.occlusion_map`).

Occlusion: pixel IoU, F1 (= Dice), precision and recall of `P > 0.5` against the synthetic
alpha `>= 0.5`, pooled over all pixels of a set, per occluder kind on the fixed occluded
FERPlus test sets (`training.occlusion.write_test_sets`, read from disk when built; the
kinds without a stored set are drawn in memory with the same per-image generator,
`image_rng(0, kind, name)`, so they are the images the writer would produce); plus the
per-part verdicts (visible = share >= 0.5) against the same verdicts computed on the true
alpha. Clean faces: the pixel false-positive rate and the share of faces whose occlusion
ratio exceeds CLEAN_FACE_FLAG (a face the app would call occluded).

Parsing: per-class IoU (confusion pooled over the set) and mIoU over the classes present in
the targets,
on clean faces (targets: the teacher on the clean face) and on every occluded set (targets:
the same with the true occluder stamped on top).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from app.occlusion import KINDS, synthesize
from app.pipeline.occlusion_map import OcclusionParsingModel, part_masks, visibility
from app.pipeline.preprocess import InputSpec
from app.runtime.providers import create_session
from models.perception import PARSING_CLASSES
from training.occlusion import image_rng
from training.perception.data import FaceSet, read_stored_set
from training.perception.targets import stamp_occluder

#: a clean face counts as falsely flagged when more than this share of it is called occluded
CLEAN_FACE_FLAG = 0.05
BATCH = 256


def confusion(pred: np.ndarray, target: np.ndarray, classes: int) -> np.ndarray:
    """(classes, classes) pixel counts, rows = target, columns = prediction."""
    index = target.astype(np.int64).ravel() * classes + pred.astype(np.int64).ravel()
    return np.bincount(index, minlength=classes * classes).reshape(classes, classes)


def iou_per_class(matrix: np.ndarray) -> np.ndarray:
    """IoU per class from a confusion matrix; NaN for a class absent from target and prediction."""
    tp = np.diag(matrix).astype(np.float64)
    union = matrix.sum(0) + matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def binary_scores(prob: np.ndarray, alpha: np.ndarray) -> dict[str, float]:
    pred, truth = prob > 0.5, alpha >= 0.5
    tp = float(np.sum(pred & truth))
    fp = float(np.sum(pred & ~truth))
    fn = float(np.sum(~pred & truth))
    return {"iou": tp / max(1.0, tp + fp + fn), "f1": 2 * tp / max(1.0, 2 * tp + fp + fn),
            "precision": tp / max(1.0, tp + fp), "recall": tp / max(1.0, tp + fn)}


class Scorer:
    """Runs the ONNX through the runtime stage in batches."""

    def __init__(self, onnx_path: Path, classes: Sequence[str], spec: InputSpec,
                 threads: int | None = None) -> None:
        self.model = OcclusionParsingModel(create_session(onnx_path, "cpu", threads), spec, classes)
        self.size = spec.size

    def predict(self, images: np.ndarray, desc: str) -> tuple[np.ndarray, np.ndarray]:
        occ, lab = [], []
        for start in tqdm(range(0, len(images), BATCH), desc=desc, unit="batch", file=sys.stderr,
                          disable=None, leave=False):
            o, p = self.model.predict(list(images[start:start + BATCH]))
            occ.append(o)
            lab.append(p.argmax(1).astype(np.uint8))
        return np.concatenate(occ), np.concatenate(lab)


def _parsing_report(pred: np.ndarray, target: np.ndarray) -> dict[str, Any]:
    """Per-class IoU; mIoU over the classes present in the targets (so on clean faces the
    absent `occluder` class, whose IoU can only be 0 or undefined, does not count; its false
    positives are measured by the occlusion map's clean-face false-positive rate)."""
    matrix = confusion(pred, target, len(PARSING_CLASSES))
    ious = iou_per_class(matrix)
    present = matrix.sum(1) > 0
    per_class = {c: (None if np.isnan(v) else round(float(v), 4)) for c, v in zip(PARSING_CLASSES, ious)}
    return {"miou": round(float(np.mean(ious[present])), 4), "per_class_iou": per_class,
            "classes_in_targets": [c for c, p in zip(PARSING_CLASSES, present) if p]}


def _part_agreement(prob: np.ndarray, alpha: np.ndarray, size: int) -> dict[str, float]:
    masks, _ = part_masks(size)
    agree = {name: 0 for name in masks}
    for p, a in zip(prob, alpha):
        pv, tv = visibility(p, masks), visibility((a >= 0.5).astype(np.float32), masks)
        for name in masks:
            agree[name] += (pv[name] >= 0.5) == (tv[name] >= 0.5)
    return {k: round(v / max(1, len(prob)), 4) for k, v in agree.items()}


def occluded_images(faces: FaceSet, kind: str, occlusion_dir: Path | None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(images 48 px, alphas 48 px, where they came from) for one kind over `faces`."""
    if occlusion_dir is not None:
        stored = read_stored_set(Path(occlusion_dir) / kind, faces.names)
        if stored is not None:
            return stored[0], stored[1], f"stored set {Path(occlusion_dir) / kind}"
    images, alphas = [], []
    for image, name in zip(faces.images, faces.names):
        occluded, mask = synthesize(image, kind, image_rng(seed, kind, name))
        images.append(occluded)
        alphas.append(mask)
    return np.stack(images), np.stack(alphas), "drawn in memory (image_rng, seed 0)"


def evaluate_perception(onnx_path: Path, faces: FaceSet, spec: InputSpec,
                        occlusion_dir: Path | None = None, kinds: Sequence[str] = KINDS,
                        threads: int | None = None) -> dict[str, Any]:
    """The full report (JSON-ready) of one ONNX on the test faces."""
    scorer = Scorer(onnx_path, PARSING_CLASSES, spec, threads)
    size = spec.size
    report: dict[str, Any] = {"n": len(faces), "source": faces.source, "size": size,
                              "clean_face_flag": CLEAN_FACE_FLAG}
    prob, labels = scorer.predict(faces.images, "perception clean")
    ratios = (prob > 0.5).mean(axis=(1, 2))
    report["clean"] = {
        "pixel_false_positive_rate": round(float((prob > 0.5).mean()), 5),
        "faces_flagged": round(float(np.mean(ratios > CLEAN_FACE_FLAG)), 4),
        "mean_occlusion_ratio": round(float(ratios.mean()), 5),
        "parsing": _parsing_report(labels, faces.parsing),
    }
    report["occluded"] = {}
    for kind in kinds:
        images, alphas48, origin = occluded_images(faces, kind, occlusion_dir)
        alphas = np.stack([cv2.resize(a, (size, size), interpolation=cv2.INTER_LINEAR) for a in alphas48])
        prob, labels = scorer.predict(images, f"perception {kind}")
        targets = np.stack([stamp_occluder(p, a) for p, a in zip(faces.parsing, alphas)])
        per_image = []
        for p, a in zip(prob, alphas):
            truth, pred = a >= 0.5, p > 0.5
            union = np.sum(truth | pred)
            if union:
                per_image.append(np.sum(truth & pred) / union)
        report["occluded"][kind] = {
            **{k: round(v, 4) for k, v in binary_scores(prob, alphas).items()},
            "mean_image_iou": round(float(np.mean(per_image)), 4) if per_image else None,
            "true_occluded_share": round(float((alphas >= 0.5).mean()), 4),
            "part_agreement": _part_agreement(prob, alphas, size),
            "parsing": _parsing_report(labels, targets),
            "images": origin,
        }
    occluded = list(report["occluded"].values())
    report["summary"] = {
        "occlusion_iou_mean": round(float(np.mean([r["iou"] for r in occluded])), 4),
        "occlusion_f1_mean": round(float(np.mean([r["f1"] for r in occluded])), 4),
        "parsing_miou_clean": report["clean"]["parsing"]["miou"],
        "parsing_miou_occluded_mean": round(float(np.mean([r["parsing"]["miou"] for r in occluded])), 4),
    }
    return report


__all__ = ["evaluate_perception", "confusion", "iou_per_class", "binary_scores", "CLEAN_FACE_FLAG"]
