"""Information-gap distillation: a teacher that saw the clean face guides a student that sees
the occluded (and degraded) copy.

What we follow: the classic teacher-student scheme for occluded faces of Georgescu & Ionescu
("Teacher-student training and triplet loss for facial expression recognition under
occlusion", ICPR 2020; extended in MVA 2022): a teacher trained on fully visible faces, a
student trained on occluded ones, the student's loss a mix of the label loss and the teacher's
distribution. IGKD (Zhang et al., Image and Vision Computing 2024) sharpens the same idea with
a jointly trained teacher and feedback losses; we keep the teacher frozen.

What we change, and why:
- The teacher is run once, before training, on every *clean* training face and its mirror
  image, and its distribution is cached (keyed by the teacher files' sha256 and the images),
  so distillation costs no training time. The occluder is drawn by occlufer itself, so the
  clean face behind every occluded training face is exactly the stored image.
- The teacher may be an ensemble of shipped models (probabilities averaged); the distribution
  used is each network's own posterior: a shipped ONNX folds a logit adjustment and a
  temperature into `probs` (`exporters.classifier.PostHoc`), which `raw_posterior` undoes
  from the file's metadata, so the student learns the teacher's natural prior and its own
  post-hoc step is fitted afresh.
- The distillation term is a soft target mixed into the label target,
  `target = (1 - w) * label + w * teacher`, at temperature 1. Cross-entropy to that mix is the
  label loss plus `w` times KL(teacher || student) up to a constant, for every network,
  including those that compute their own loss (mask-aware, ORSANet, DFD-Net, FS-DSN), with
  no change to them. Hinton's temperature > 1 is left out: FERPlus targets are already soft.
- Feature-level guidance on the visible part (IGKD's feature terms) is not done.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.errors import OccluferError


def cache_dir() -> Path:
    """$OCCLUFER_CACHE/teacher_targets, else ~/.cache/occlufer/teacher_targets."""
    if os.environ.get("OCCLUFER_CACHE"):
        return Path(os.environ["OCCLUFER_CACHE"]) / "teacher_targets"
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "occlufer" / "teacher_targets"


def raw_posterior(probs: np.ndarray, posthoc: dict | None) -> np.ndarray:
    """Undo a shipped model's in-graph post-hoc step: with `probs = softmax((z + b) / T)`,
    `softmax(T * log(probs) - b)` is `softmax(z)`, the network's own distribution."""
    if not posthoc:
        return probs
    bias = np.asarray(posthoc.get("logit_bias") or np.zeros(probs.shape[1]), np.float64)
    temperature = float(posthoc.get("temperature", 1.0))
    if not bias.any() and temperature == 1.0:
        return probs
    logits = temperature * np.log(np.clip(probs.astype(np.float64), 1e-12, 1.0)) - bias
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _images_digest(names: Sequence[str], images: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update("\n".join(names).encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def teacher_targets(teachers: Sequence[str], images: np.ndarray, names: Sequence[str],
                    classes: Sequence[str], manifest: Path | None = None,
                    progress: bool = True, cache: Path | None = None) -> tuple[np.ndarray, str]:
    """The teacher distribution (N, C) on the clean `images` (each averaged with its mirror
    image, then over the `teachers`), in the order of `classes`; and a line for the card.
    Cached on disk by the teachers' sha256 and the images themselves."""
    from app.pipeline.preprocess import prepare_batch
    from app.runtime.providers import create_session
    from training.evaluate import model_metadata, sha256_file

    if not teachers:
        raise OccluferError("distillation needs at least one teacher model")
    files, shas = [], []
    for name in teachers:
        file, sha = _teacher_file(name, manifest)
        files.append(file)
        shas.append(sha or sha256_file(file))
    key = hashlib.sha256(json.dumps({"teachers": shas, "classes": list(classes),
                                     "images": _images_digest(names, images)}).encode()
                         ).hexdigest()[:24]
    folder = Path(cache) if cache else cache_dir()
    path = folder / f"{key}.npy"
    note = (f"distilled from {' + '.join(teachers)} (sha256 "
            f"{', '.join(s[:12] for s in shas)}) on the clean faces and their mirror images")
    if path.is_file():
        targets = np.load(path)
        if targets.shape == (len(images), len(classes)):
            return targets, note
    absent = [name for name, file in zip(teachers, files) if file is None]
    if absent:
        raise OccluferError(
            f"teacher {', '.join(absent)} is not installed here and its targets for these "
            f"{len(images)} faces are not cached ({path} is missing): run `occlufer models "
            f"fetch {' '.join(absent)}`, or copy the cached targets from a machine that has "
            "the teacher (python -m training.offload pack)")
    total = np.zeros((len(images), len(classes)), np.float64)
    for name, file in zip(teachers, files):
        session = create_session(file, "cpu")
        spec, model_classes, meta = model_metadata(session)
        missing = [c for c in classes if c not in model_classes]
        if missing:
            raise OccluferError(f"teacher {name} has no class {', '.join(missing)}")
        order = [list(model_classes).index(c) for c in classes]
        posthoc = json.loads(meta["posthoc"]) if meta.get("posthoc") else None
        input_name = session.get_inputs()[0].name
        for start in tqdm(range(0, len(images), 256), desc=f"teacher {name}", unit="batch",
                          disable=not progress, file=sys.stderr):
            x = prepare_batch(list(images[start:start + 256]), spec)
            probs = 0.0
            for view in (x, x[..., ::-1].copy()):
                out = session.run(["probs"], {input_name: view})[0]
                probs = probs + raw_posterior(np.asarray(out, np.float32), posthoc) / 2
            total[start:start + len(x)] += np.asarray(probs)[:, order]
    targets = (total / len(teachers)).astype(np.float32)
    targets /= targets.sum(axis=1, keepdims=True)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.npy")
    np.save(tmp, targets)
    os.replace(tmp, path)
    return targets, note


def _teacher_file(name: str, manifest: Path | None) -> tuple[Path | None, str | None]:
    """The teacher's file, or (None, the manifest's sha256) when a shipped teacher is not
    installed on this machine: its cached targets still identify it, so a machine that only
    trains (a lent GPU, which gets the targets and not the 18 MB ensemble) can use them."""
    from app.errors import ModelMissingError
    from app.runtime.store import ModelStore
    from training.cli import resolve_model_file

    try:
        return resolve_model_file(name, manifest), None
    except ModelMissingError:
        sha = ModelStore(manifest=manifest).expected_sha256(name)
        if not sha:
            raise
        return None, sha


def mix_targets(label: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """`(1 - weight) * label + weight * teacher`; `label` is (B,) class indices or (B, C)."""
    if label.ndim == 1:
        label = np.eye(teacher.shape[1], dtype=np.float32)[label]
    return ((1.0 - weight) * label + weight * teacher).astype(np.float32)
