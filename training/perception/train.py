"""Train the occlusion + parsing U-Net, then export, evaluate, document and register it.

    occlufer train-perception --data-root ../shared/data/ferplus --out runs/perception_unet64 \
        [--epochs 8] [--limit 10000] [--resume]

1. data: a seeded subset (`limit`) of the FERPlus train faces kept by the majority protocol,
   the first VAL_COUNT validation faces and the whole test split; the FaceMesh teacher
   (`facemesh_468` from the model store) runs once per face on the clean image and is cached
   (`teacher.py`); faces where it finds no face (presence < MIN_PRESENCE) are left out;
2. samples: synthetic occluders of every kind on 1 - p_clean of the faces, flip, jitter
   (`data.py`), seeded by (seed, epoch, index);
3. loss: BCE + Dice on the occlusion logit against the occluder's alpha, plus class-weighted
   cross-entropy on the parsing logits (weights freq^-1/2, normalised to 1 on average over
   pixels: eyes and brows are ~1 % of a crop and would otherwise be learnt last);
4. AdamW, linear warmup + cosine per iteration; `last.pt` after every epoch (model, optimiser,
   scheduler, RNG states, history) and `best.pt` on the best validation score (mean of the
   occlusion IoU and the parsing mIoU on a fixed occluded validation copy), both atomic; a
   resumed run produces the same weights as one that never stopped;
5. the best weights are exported (`export.py`, parity-checked), scored on the test split
   (`evaluate.py`), written up as a model card and registered in the store manifest.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from app.errors import OccluferError
from app.pipeline.preprocess import InputSpec
from models.perception import OCCLUDER, PARSING_CLASSES, PerceptionUNet
from training.cli import add_publish_args
from training.perception.data import AugmentSpec, FaceSet, fixed_occluded, make_batch
from training.perception.evaluate import binary_scores, confusion, iou_per_class
from training.trainer import (LICENCE, check_resume_identity, git_commit, hardware, restore_rng_states, rng_states,
                              save_atomic, seed_everything, write_metrics_csv)

MODEL_NAME = "perception_unet64"
VAL_COUNT = 600
MIN_PRESENCE = 0.5
CLASS_WEIGHT_MAX = 10.0


@dataclass(frozen=True)
class PerceptionRecipe:
    """Everything that shapes a run (stored in the checkpoint; a resume must match it)."""

    size: int = 64
    widths: tuple[int, ...] = (16, 32, 64, 96)
    epochs: int = 8
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 0.3
    dice_weight: float = 1.0
    parsing_weight: float = 1.0
    augment: AugmentSpec = field(default_factory=AugmentSpec)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["widths"] = list(self.widths)
        data["augment"]["kinds"] = list(self.augment.kinds)
        data["augment"]["contrast"] = list(self.augment.contrast)
        return data


# --------------------------------------------------------------------------- data
def teacher_landmarker(threads: int | None = None):
    """The FaceMesh teacher from the store, with a clear error when it is not installed."""
    from app.errors import ModelMissingError
    from app.pipeline.landmarks import FaceMeshLandmarker
    from app.runtime.store import ModelStore

    store = ModelStore()
    try:
        path = store.verified_path("facemesh_468")
    except ModelMissingError as exc:
        raise OccluferError(f"the parsing targets come from the FaceMesh teacher: {exc}\n"
                            "or: python -m exporters.facemesh --install") from exc
    return FaceMeshLandmarker.from_store("facemesh_468", store, "cpu", threads), path


def teacher_faces(data_root: Path, split: str, limit: int | None = None, seed: int = 0,
                  first: int | None = None, progress: bool = True,
                  teacher=None) -> tuple[FaceSet, np.ndarray]:
    """Clean faces of one FERPlus split whose FaceMesh teacher presence holds, and the
    teacher's (N, 468, 2) points on them as fractions of the crop side (no parsing yet).

    `limit` picks a seeded random subset (the trainer's `--limit` convention), `first` the
    first N faces in split order; `teacher` is (FaceMeshLandmarker, its ONNX path), default
    the user's installed `facemesh_468`. The perception and landmark trainers both start here."""
    from training.data import load_split
    from training.perception.teacher import cached_teacher_points

    data = load_split("ferplus", data_root, split, "majority", progress=progress)
    index = np.arange(len(data))
    if limit is not None and limit < len(index):
        index = np.sort(np.random.default_rng([seed, 271828]).permutation(len(index))[:limit])
    if first is not None:
        index = index[:first]
    landmarker, teacher_path = teacher or teacher_landmarker()
    names = [data.names[i] for i in index]
    points, presence = cached_teacher_points(landmarker, teacher_path, split, names,
                                             data.images[index], progress=progress)
    keep = presence >= MIN_PRESENCE
    faces = FaceSet(images=data.images[index][keep], parsing=np.zeros((0, 0, 0), np.uint8),
                    names=[n for n, k in zip(names, keep) if k],
                    source=f"ferplus {split} ({data_root})", dropped=int((~keep).sum()),
                    presence=presence[keep])
    return faces, points[keep]


def load_faces(data_root: Path, split: str, size: int, limit: int | None = None,
               seed: int = 0, first: int | None = None, progress: bool = True,
               teacher=None) -> FaceSet:
    """`teacher_faces` with their parsing targets rasterised at `size` px."""
    from training.perception.targets import rasterise_parsing

    faces, points = teacher_faces(data_root, split, limit, seed, first, progress, teacher)
    faces.parsing = np.stack([rasterise_parsing(p, size) for p in points]) if len(points) \
        else np.zeros((0, size, size), np.uint8)
    return faces


def class_weights(faces: FaceSet, recipe: PerceptionRecipe, seed: int, probe: int = 256) -> np.ndarray:
    """freq^-1/2 per parsing class (clipped, mean 1 over pixels). Frequencies: the clean
    targets, with the occluder's share measured on `probe` synthesised training samples."""
    counts = np.bincount(faces.parsing.ravel(), minlength=len(PARSING_CLASSES)).astype(np.float64)
    freq = counts / counts.sum()
    picks = np.random.default_rng([seed, 99]).choice(len(faces), min(probe, len(faces)), replace=False)
    _, alphas, _ = make_batch(faces, picks, 10**6, seed, recipe.augment, recipe.size)
    occluder = float((alphas >= 0.5).mean())
    freq = freq * (1.0 - occluder)
    freq[OCCLUDER] = occluder
    weights = np.where(freq > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    weights /= float((weights * freq).sum())
    return np.minimum(weights, CLASS_WEIGHT_MAX).astype(np.float32)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng([int(seed), int(epoch), 104729]).permutation(n)
    stop = (n // batch_size) * batch_size if n >= batch_size else n
    return [order[s:s + batch_size].tolist() for s in range(0, stop, batch_size)]


# --------------------------------------------------------------------------- loss / metrics
def perception_loss(occ_logit: torch.Tensor, parse_logit: torch.Tensor, alpha: torch.Tensor,
                    labels: torch.Tensor, weights: torch.Tensor,
                    recipe: PerceptionRecipe) -> tuple[torch.Tensor, dict[str, float]]:
    """BCE + Dice (batch-pooled, smoothed by 1) on occlusion; weighted CE on parsing."""
    bce = F.binary_cross_entropy_with_logits(occ_logit, alpha)
    prob = torch.sigmoid(occ_logit)
    dice = 1.0 - (2.0 * (prob * alpha).sum() + 1.0) / (prob.sum() + alpha.sum() + 1.0)
    ce = F.cross_entropy(parse_logit, labels, weight=weights)
    loss = bce + recipe.dice_weight * dice + recipe.parsing_weight * ce
    return loss, {"bce": float(bce.detach()), "dice": float(dice.detach()), "ce": float(ce.detach())}


def validate(model: PerceptionUNet, images: np.ndarray, alphas: np.ndarray,
             labels: np.ndarray) -> dict[str, float]:
    """Occlusion IoU/F1 and parsing mIoU of `model` on a fixed prepared set."""
    model.eval()
    probs, preds = [], []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = (torch.from_numpy(images[start:start + 256]).float()[:, None] - 127.5) / 127.5
            occ, parse = model(x)
            probs.append(torch.sigmoid(occ)[:, 0].numpy())
            preds.append(parse.argmax(1).numpy().astype(np.uint8))
    prob, pred = np.concatenate(probs), np.concatenate(preds)
    scores = binary_scores(prob, alphas)
    ious = iou_per_class(confusion(pred, labels, len(PARSING_CLASSES)))
    miou = float(np.nanmean(ious))
    return {"val_occ_iou": round(scores["iou"], 4), "val_occ_f1": round(scores["f1"], 4),
            "val_miou": round(miou, 4), "val_score": round((scores["iou"] + miou) / 2, 4)}


# --------------------------------------------------------------------------- state
@dataclass
class PerceptionState:
    epoch: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)


def lr_factor(step: int, total: int, warmup: int) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def equivalent_command(data_root: Path, out_dir: Path, epochs: int | None, limit: int | None,
                       seed: int, resume: bool) -> str:
    parts = ["occlufer", "train-perception", "--data-root", str(data_root), "--out", str(out_dir)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if seed:
        parts += ["--seed", str(seed)]
    if resume:
        parts.append("--resume")
    return shlex.join(parts)


# --------------------------------------------------------------------------- train
def _train_perception(data_root: Path, out_dir: Path, epochs: int | None = None,
                     limit: int | None = None, seed: int = 0, resume: bool = False, *,
                     recipe: PerceptionRecipe | None = None, val_count: int = VAL_COUNT,
                     test_first: int | None = None, stop_after: int | None = None,
                     finalize: bool = True, register: bool = True, manifest: Path | None = None,
                     name: str = MODEL_NAME, occlusion_dir: Path | None = None,
                     threads: int | None = 2, command: str | None = None,
                     progress: bool = True, teacher=None) -> Path:
    """Train and return the final ONNX (or `last.pt` when stopped early / not finalised).

    `stop_after=k` stops after k finished epochs as if killed (tests); `test_first` scores
    only the first N test faces; `threads` sets torch's CPU threads (None: leave as is);
    `teacher` is a (FaceMeshLandmarker, onnx path) pair (default: facemesh_468 from the
    user's store)."""
    started_wall = time.perf_counter()
    recipe = recipe or PerceptionRecipe()
    if epochs is not None:
        recipe = replace(recipe, epochs=int(epochs))
    data_root = Path(data_root).expanduser().resolve()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists() and not resume:
        raise OccluferError(f"{out_dir} already holds a run (last.pt); pass --resume to continue "
                            "it or --out to start a new one")
    command = command or equivalent_command(data_root, out_dir, epochs, limit, seed, resume)
    seed_everything(seed)

    teacher = teacher or teacher_landmarker(threads)
    train_faces = load_faces(data_root, "train", recipe.size, limit=limit, seed=seed,
                             progress=progress, teacher=teacher)
    valid_faces = load_faces(data_root, "valid", recipe.size, first=val_count, progress=progress,
                             teacher=teacher)
    if len(train_faces) == 0:
        raise OccluferError("no training faces left after the teacher's presence check")
    val_images, val_alphas, val_labels, _ = fixed_occluded(valid_faces, seed, "perception-valid",
                                                           recipe.size)
    weights = class_weights(train_faces, recipe, seed)

    model = PerceptionUNet(in_chans=1, num_classes=len(PARSING_CLASSES), widths=recipe.widths)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=recipe.lr)
    batch_size = min(recipe.batch_size, len(train_faces))
    steps = len(epoch_batches(len(train_faces), batch_size, 0, seed))
    total, warmup = recipe.epochs * steps, int(round(recipe.warmup_epochs * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total, warmup))
    identity = {"seed": seed, "limit": limit, "size": recipe.size, "widths": list(recipe.widths),
                "train_names_head": train_faces.names[:8], "n_train": len(train_faces)}
    state = PerceptionState()
    if resume and last_path.exists():
        checkpoint = torch.load(last_path, map_location="cpu", weights_only=False)
        check_resume_identity(checkpoint, identity, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        state = PerceptionState(**checkpoint["state"])
        restore_rng_states(checkpoint["rng"])
        first_command = checkpoint.get("command")
        if first_command and first_command != command:  # the card names the run's own command
            command = f"{first_command}  (resumed/finalised with: {command})"
        tqdm.write(f"resuming {last_path} after epoch {state.epoch} (best score "
                   f"{state.best_score:.4f} at epoch {state.best_epoch})")
    weight_t = torch.from_numpy(weights)
    interactive = sys.stderr.isatty()

    while state.epoch < recipe.epochs and (stop_after is None or state.epoch < stop_after):
        epoch = state.epoch
        batches = epoch_batches(len(train_faces), batch_size, epoch, seed)
        model.train()
        sums = {"loss": 0.0, "bce": 0.0, "dice": 0.0, "ce": 0.0}
        seen, epoch_start = 0, time.perf_counter()
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{recipe.epochs}", unit="batch",
                   disable=not progress, file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if interactive else 30.0)
        for indices in bar:
            x, alpha, labels = make_batch(train_faces, indices, epoch, seed, recipe.augment, recipe.size)
            occ, parse = model(torch.from_numpy(x))
            loss, parts = perception_loss(occ, parse, torch.from_numpy(alpha),
                                          torch.from_numpy(labels), weight_t, recipe)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(indices)
            sums["loss"] += float(loss.detach()) * len(indices)
            for key, value in parts.items():
                sums[key] += value * len(indices)
            rate = seen / max(1e-9, time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{sums['loss'] / seen:.3f}", img_s=f"{rate:.0f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - epoch_start
        scores = validate(model, val_images, val_alphas, val_labels)
        state.epoch += 1
        state.train_seconds += seconds
        improved = scores["val_score"] > state.best_score
        if improved:
            state.best_score, state.best_epoch = scores["val_score"], state.epoch
        row = {"epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"],
               **{f"train_{k}": round(v / max(1, seen), 5) for k, v in sums.items()},
               **scores, "images": seen, "seconds": round(seconds, 1),
               "img_per_s": round(seen / max(1e-9, seconds), 1),
               "finished": dt.datetime.now().isoformat(timespec="seconds")}
        state.history.append(row)
        payload = {"model": model.state_dict(), "model_cfg": {"in_chans": 1,
                   "num_classes": len(PARSING_CLASSES), "widths": list(recipe.widths)},
                   "classes": list(PARSING_CLASSES), "recipe": recipe.to_dict(),
                   "identity": identity, "class_weights": weights.tolist(),
                   "data_root": str(data_root), "epoch": state.epoch,
                   "command": command.split("  (resumed/finalised with:")[0]}
        if improved:
            save_atomic(payload, best_path)
        save_atomic({**payload, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "state": asdict(state),
                     "rng": rng_states()}, last_path)
        write_metrics_csv(state.history, out_dir / "metrics.csv")
        tqdm.write(f"epoch {state.epoch}/{recipe.epochs}: loss {row['train_loss']:.4f} | valid "
                   f"occlusion IoU {scores['val_occ_iou']:.3f} F1 {scores['val_occ_f1']:.3f} "
                   f"parsing mIoU {scores['val_miou']:.3f} (best score {state.best_score:.4f} "
                   f"@ {state.best_epoch}) | {row['img_per_s']:.0f} img/s, {seconds / 60:.1f} min")

    if not finalize or state.epoch < recipe.epochs:
        return last_path
    return finalize_perception(
        out_dir=out_dir, name=name, data_root=data_root, train_faces=train_faces,
        valid_faces=valid_faces, state=state, recipe=recipe, command=command, limit=limit,
        test_first=test_first, register=register, manifest=manifest,
        occlusion_dir=occlusion_dir, threads=threads, teacher=teacher, progress=progress,
        started_wall=started_wall)


def train_perception(*args: Any, threads: int | None = 2, **kwargs: Any) -> Path:
    """`_train_perception` with torch's CPU thread count set to `threads` for the run only: the
    caller's setting comes back afterwards, so a later run in the same process (a test, the
    expression trainer) computes with the threads it expects."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _train_perception(*args, threads=threads, **kwargs)
    finally:
        torch.set_num_threads(previous)


def load_perception_checkpoint(path: Path) -> tuple[PerceptionUNet, dict[str, Any]]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    cfg = dict(state["model_cfg"])
    cfg["widths"] = tuple(cfg["widths"])
    model = PerceptionUNet(**cfg)
    model.load_state_dict(state["model"])
    return model.eval(), state


def finalize_perception(*, out_dir: Path, name: str, data_root: Path, train_faces: FaceSet,
                        valid_faces: FaceSet, state: PerceptionState, recipe: PerceptionRecipe,
                        command: str, limit: int | None, test_first: int | None, register: bool,
                        manifest: Path | None, occlusion_dir: Path | None, threads: int | None,
                        teacher, progress: bool, started_wall: float) -> Path:
    """Export the best weights, evaluate on the test split, write the card, register."""
    from training.evaluate import default_occlusion_dir
    from training.perception.evaluate import evaluate_perception
    from training.perception.export import export_perception

    model, checkpoint = load_perception_checkpoint(out_dir / "best.pt")
    spec = InputSpec(size=recipe.size, color="gray", channels=1)
    final = out_dir / f"{name}.onnx"
    export = export_perception(model, spec, PARSING_CLASSES, final,
                               verify_images=list(valid_faces.images[:64]),
                               extra_metadata={"entry_name": name, "trained_on": "ferplus"})
    tqdm.write(f"exported {final} (max |ONNX - torch| occlusion {export.max_abs_diff_occlusion:.2g}, "
               f"parsing {export.max_abs_diff_parsing:.2g})")
    test_faces = load_faces(data_root, "test", recipe.size, first=test_first, progress=progress,
                            teacher=teacher)
    occ_dir = Path(occlusion_dir) if occlusion_dir else default_occlusion_dir()
    report = evaluate_perception(final, test_faces, spec, occ_dir, threads=threads)
    report.update({"model": name, "onnx_sha256": export.sha256, "test_dropped": test_faces.dropped})
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    card = write_perception_card(out_dir / f"{name}.md", name=name, checkpoint=checkpoint,
                                 recipe=recipe, command=command, data_root=data_root,
                                 train_faces=train_faces, valid_faces=valid_faces, state=state,
                                 report=report, export=export, final=final, limit=limit,
                                 params=sum(p.numel() for p in model.parameters()),
                                 wall_seconds=time.perf_counter() - started_wall)
    if register:
        publish_perception(name, final, card, spec, report, recipe, manifest)
    return final


def _fmt(value: float | None, percent: bool = True) -> str:
    if value is None:
        return "n/a"
    return f"{value * 100:.1f}" if percent else f"{value:.3f}"


def write_perception_card(path: Path, *, name: str, checkpoint: dict, recipe: PerceptionRecipe,
                          command: str, data_root: Path, train_faces: FaceSet,
                          valid_faces: FaceSet, state: PerceptionState, report: dict[str, Any],
                          export, final: Path, limit: int | None, params: int,
                          wall_seconds: float) -> Path:
    from training.perception.evaluate import CLEAN_FACE_FLAG

    size = recipe.size
    clean = report["clean"]
    lines = [
        f"# {name} — occlusion map + face parsing",
        "",
        "| | |",
        "|---|---|",
        f"| Network | `models/perception.py` PerceptionUNet {checkpoint['model_cfg']} "
        f"({params:,} parameters): shared U-Net, two 1x1 heads |",
        f"| Input | `input` (N, 1, {size}, {size}) float32, the aligned face (FERPlus framing) "
        "in gray, (x - 127.5) / 127.5 |",
        f"| Outputs | `occlusion` (N, 1, {size}, {size}) sigmoid P(pixel occluded); `parsing` "
        f"(N, {len(PARSING_CLASSES)}, {size}, {size}) softmax |",
        f"| Classes | {', '.join(PARSING_CLASSES)} (left/right = the subject's) |",
        f"| File | `{final.name}` (fp32, {final.stat().st_size / 1e6:.2f} MB, sha256 `{export.sha256}`) |",
        f"| Licence | {LICENCE} Parsing targets from Google MediaPipe FaceMesh (Apache-2.0). |",
        "",
        "## Occlusion map (FERPlus test, synthetic occluders)",
        "",
        f"Pixel scores of `P > 0.5` against the occluder alpha `>= 0.5` at {size} px, pooled "
        "over the set; parts: share of faces where the visible/hidden verdict for the part "
        "(template geometry) matches the verdict on the true alpha.",
        "",
        "| Occluder | IoU | F1 | Precision | Recall | mean image IoU | true occluded share | "
        "parts agree (L eye / R eye / mouth) | images |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, r in report["occluded"].items():
        agree = r["part_agreement"]
        lines.append(f"| {kind} | {_fmt(r['iou'])} | {_fmt(r['f1'])} | {_fmt(r['precision'])} | "
                     f"{_fmt(r['recall'])} | {_fmt(r['mean_image_iou'])} | "
                     f"{_fmt(r['true_occluded_share'])} | {_fmt(agree['left_eye'])} / "
                     f"{_fmt(agree['right_eye'])} / {_fmt(agree['mouth'])} | "
                     f"{'stored' if r['images'].startswith('stored') else 'in memory'} |")
    lines += [
        "",
        f"Clean faces (n = {report['n']}): pixel false-positive rate "
        f"{clean['pixel_false_positive_rate'] * 100:.2f} %, faces with more than "
        f"{CLEAN_FACE_FLAG:.0%} called occluded {clean['faces_flagged'] * 100:.1f} %, mean "
        f"occlusion ratio {clean['mean_occlusion_ratio'] * 100:.2f} %.",
        "",
        "## Face parsing (IoU %, targets: FaceMesh teacher on the clean face + true occluder)",
        "",
        "mIoU averages the classes present in the set's targets (on clean faces `occluder` is "
        "absent: its 0 there only says some pixels were called occluder, see the false-positive "
        "rate above).",
        "",
        "| Set | mIoU | " + " | ".join(PARSING_CLASSES) + " |",
        "|---|---|" + "---|" * len(PARSING_CLASSES),
    ]
    rows = [("clean", clean["parsing"])] + [(k, r["parsing"]) for k, r in report["occluded"].items()]
    for label, parsing in rows:
        lines.append(f"| {label} | {_fmt(parsing['miou'])} | " + " | ".join(
            _fmt(parsing["per_class_iou"][c]) for c in PARSING_CLASSES) + " |")
    lines += [
        "",
        "## Training",
        "",
        f"- Command: `{command}`",
        f"- Code: git commit {git_commit()}",
        f"- Data: FERPlus at `{data_root}`: {len(train_faces)} training faces "
        f"({'seeded subset of ' + str(limit) if limit else 'all majority-protocol faces'}; "
        f"{train_faces.dropped} left out where the teacher found no face), {len(valid_faces)} "
        f"validation faces (fixed occluders, p_clean 0.3), test {report['n']} faces "
        f"({report.get('test_dropped', 0)} left out by the teacher check).",
        f"- Targets: occlusion = the synthetic occluder's alpha (`app.occlusion`, kinds "
        f"{', '.join(recipe.augment.kinds)}; {recipe.augment.p_clean:.0%} of faces left clean); "
        "parsing = FaceMesh (facemesh_468, two passes at 192 px on the 4x-upscaled crop) regions "
        "rasterised on the clean face, occluder stamped on top (alpha >= 0.5).",
        f"- Recipe: {recipe.epochs} epochs, batch {recipe.batch_size}, AdamW lr {recipe.lr} "
        f"(warmup {recipe.warmup_epochs} epoch, cosine), wd {recipe.weight_decay}; loss BCE + "
        f"{recipe.dice_weight} x Dice (occlusion) + {recipe.parsing_weight} x class-weighted CE "
        "(parsing); flip, similarity jitter, brightness/contrast.",
        f"- Best validation score (mean of occlusion IoU and parsing mIoU) {state.best_score:.4f} "
        f"at epoch {state.best_epoch}.",
        f"- Export check on {export.batch} validation faces: max |ONNX - torch| occlusion "
        f"{export.max_abs_diff_occlusion:.2g}, parsing {export.max_abs_diff_parsing:.2g}.",
        f"- Hardware: {hardware('cpu')}",
        f"- Wall time: training {state.train_seconds / 60:.1f} min over all sessions; the "
        f"finalising session (teacher, export, evaluation) {wall_seconds / 60:.1f} min",
        "",
        "## Epochs",
        "",
        "| epoch | lr | train loss | BCE | Dice | CE | val occ IoU | val occ F1 | val mIoU | img/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['epoch']} | {r['lr']:.3g} | {r['train_loss']:.4f} | {r['train_bce']:.4f} | "
              f"{r['train_dice']:.4f} | {r['train_ce']:.4f} | {r['val_occ_iou']:.3f} | "
              f"{r['val_occ_f1']:.3f} | {r['val_miou']:.3f} | {r['img_per_s']:.0f} |"
              for r in state.history]
    lines += [
        "", "## Limits", "",
        "Trained and scored on 48 px FERPlus faces (upscaled to 64 px) with procedural "
        "occluders from the same family as the test sets (different draws), so the numbers "
        "measure these occluders, not real-world occlusion in general. Parsing targets come "
        "from a landmark model, so class boundaries are polygons, `hair_or_other` is a fixed "
        "band around the face silhouette (landmarks cannot see hair), and the teacher's own "
        "errors are in the targets.", ""]
    path.write_text("\n".join(lines))
    return path


def publish_perception(name: str, onnx_path: Path, card: Path, spec: InputSpec,
                       report: dict[str, Any], recipe: PerceptionRecipe,
                       manifest: Path | None) -> Path:
    """Copy ONNX + card beside the manifest (`models/`, `cards/`) and register the entry."""
    from app.runtime.store import default_manifest_path
    from exporters.manifest import copy_into_assets, register_model_entry
    from training.evaluate import sha256_file

    manifest_path = Path(manifest) if manifest else default_manifest_path()
    onnx_copy, _ = copy_into_assets(name, onnx_path, card, manifest_path)
    summary = report["summary"]
    entry = {
        "task": "occlusion",
        "file": f"models/{name}.onnx",
        "sha256": sha256_file(onnx_copy),
        "licence": LICENCE + " Parsing targets from Google MediaPipe FaceMesh (Apache-2.0).",
        "description": (
            f"occlufer's occlusion map + face parsing U-Net ({recipe.size} px gray aligned face, "
            f"one pass, two outputs). FERPlus test, synthetic occluders: occlusion IoU "
            f"{summary['occlusion_iou_mean'] * 100:.1f} % (mean over kinds), clean-face pixel "
            f"false positives {report['clean']['pixel_false_positive_rate'] * 100:.2f} %; parsing "
            f"mIoU clean {summary['parsing_miou_clean'] * 100:.1f} %, occluded "
            f"{summary['parsing_miou_occluded_mean'] * 100:.1f} %. Reproduce: occlufer "
            "train-perception (see the card)."),
        "sources": [{"kind": "asset"}],
        "input": spec.to_manifest(),
        "classes": list(PARSING_CLASSES),
        "outputs": ["occlusion", "parsing"],
        "card": f"cards/{name}.md",
        "metrics": {
            "occlusion_iou": {k: r["iou"] for k, r in report["occluded"].items()},
            "occlusion_f1": {k: r["f1"] for k, r in report["occluded"].items()},
            "clean_pixel_false_positive_rate": report["clean"]["pixel_false_positive_rate"],
            "parsing_miou": {"clean": report["clean"]["parsing"]["miou"],
                             **{k: r["parsing"]["miou"] for k, r in report["occluded"].items()}},
            "n": report["n"],
        },
    }
    return register_model_entry(name, entry, manifest_path)


# --------------------------------------------------------------------------- CLI
def add_train_perception_args(parser) -> None:
    parser.add_argument("--data-root", required=True, type=Path, help="FERPlus root folder")
    parser.add_argument("--out", required=True, type=Path, help="run folder")
    parser.add_argument("--epochs", type=int, default=None, help="default 8")
    parser.add_argument("--limit", type=int, default=None,
                        help="use a seeded subset of N training faces (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out after its last finished epoch")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--name", default=MODEL_NAME, help="manifest entry name")
    add_publish_args(parser)
    parser.add_argument("--occlusion-dir", type=Path, default=None,
                        help="where the stored occluded test sets are (default "
                             "~/.cache/occlufer/occlusion_sets); missing kinds are drawn in memory")


def run_train_perception(args) -> int:
    command = shlex.join(["occlufer", *sys.argv[1:]]) if sys.argv[1:2] == ["train-perception"] else None
    result = train_perception(args.data_root, args.out, epochs=args.epochs, limit=args.limit,
                              seed=args.seed, resume=args.resume, register=args.register,
                              manifest=args.manifest, name=args.name,
                              occlusion_dir=args.occlusion_dir, threads=args.threads,
                              command=command)
    print(f"wrote {result}")
    return 0


__all__ = ["PerceptionRecipe", "train_perception", "load_faces", "perception_loss",
           "add_train_perception_args", "run_train_perception", "MODEL_NAME",
           "load_perception_checkpoint"]
