"""Train, evaluate, export and publish the occlusion-robust 68-point landmark student.

Data: FERPlus faces with the FaceMesh teacher's points on the *clean* face (cached, shared
with the perception trainer: `training/perception/teacher.py`), reduced to iBUG-68. Each
training sample is the face with a synthetic occluder from `app.occlusion` (all eight kinds;
30 % left clean), upscaled to the network size, then flipped (points mirrored and re-indexed),
jittered (rotation, scale, shift: the live alignment is never exact) and photometrically
changed, every random choice seeded by (seed, epoch, index) so a resumed run is identical. A
point's visibility target is whether the occluder's alpha under it is below 0.5 (and the point
is inside the crop).

Evaluation (`evaluate_student`), on the FERPlus test faces, clean and under each fixed
occluded test set: NME (mean point error / inter-ocular distance, outer eye corners 36-45 of
the target) of the student on the occluded face, of the teacher on the occluded face, and of
the FERPlus mean shape, all against the teacher on the clean face; overall and over the
points the occluder hides. A JSON report and a bar chart PNG.

One command reproduces the shipped file: `occlufer train-landmarks --data-root FERPLUS`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.nn import functional as F
from tqdm import tqdm

from app import REPO_ROOT
from app.occlusion import KINDS, random_occlusion
from app.occlusion.synthesis import TEST_SET_KINDS
from app.pipeline.landmarks68 import facemesh_to_ibug68
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.priors import FERPLUS_LANDMARKS68, IBUG68_MIRROR
from models.landmark_student import LandmarkStudent, LandmarkStudentExport
from training.perception.data import AugmentSpec, FaceSet, jitter_matrix, photometric, sample_rng

NAME = "landmarks68_student"
#: outer eye corners: the inter-ocular distance of the NME
IOD_POINTS = (36, 45)
LICENCE = ("MIT (occlufer-trained weights). Training data: FER-2013 images (ICML 2013 "
           "representation-learning challenge; its terms of use apply). Targets from Google "
           "MediaPipe FaceMesh (Apache-2.0).")


@dataclass(frozen=True)
class StudentRecipe:
    size: int = 64
    width: int = 24
    hidden: int = 256
    epochs: int = 14
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 1e-4
    limit: int = 12000  # FERPlus training faces (seeded subset; the teacher runs once on each)
    val_faces: int = 1000
    p_clean: float = 0.3
    visibility_weight: float = 0.1


# ------------------------------------------------------------------ data
def teacher68(split: str, data_root: Path, limit: int | None, first: int | None = None,
              seed: int = 0, progress: bool = True, teacher=None) -> tuple[FaceSet, np.ndarray]:
    """Clean FERPlus faces of `split` whose teacher presence holds (`teacher_faces`), and
    their 68 teacher points as fractions of the crop side."""
    from training.perception.train import teacher_faces

    faces, points = teacher_faces(data_root, split, limit, seed, first, progress, teacher)
    return faces, np.stack([facemesh_to_ibug68(p) for p in points]).astype(np.float32)


def point_visibility(alpha: np.ndarray, pixels: np.ndarray, outside: float = 0.0) -> np.ndarray:
    """1 where a point (pixel coordinates) lies on the map where its alpha is below 0.5, 0
    under the occluder; `outside` for points off the map (0 for training: nothing there can
    be seen; 1 for scoring "hidden by the occluder", which they are not)."""
    size = alpha.shape[0]
    xy = np.rint(pixels).astype(int)
    inside = (xy >= 0).all(axis=1) & (xy < size).all(axis=1)
    clipped = np.clip(xy, 0, size - 1)
    seen = (alpha[clipped[:, 1], clipped[:, 0]] < 0.5).astype(np.float32)
    return np.where(inside, seen, np.float32(outside)).astype(np.float32)


def student_sample(image: np.ndarray, points: np.ndarray, rng: np.random.Generator, size: int,
                   spec: AugmentSpec | None, occluded: tuple[np.ndarray, np.ndarray] | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image (S, S) uint8, points (68, 2) fractions, visibility (68,)) of one face.
    `occluded` = (image, alpha) at the data's size skips the random occluder (test sets)."""
    if occluded is None:
        kinds = spec.kinds if spec is not None else KINDS
        p_clean = spec.p_clean if spec is not None else 0.3
        occluded_image, mask, _ = random_occlusion(image, rng, kinds=kinds, p_clean=p_clean)
    else:
        occluded_image, mask = occluded
    interp = cv2.INTER_LINEAR if occluded_image.shape[0] < size else cv2.INTER_AREA
    img = cv2.resize(occluded_image, (size, size), interpolation=interp)
    alpha = cv2.resize(mask.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    pixels = points.astype(np.float64) * size - 0.5
    if spec is not None and occluded is None:
        if spec.flip and rng.random() < 0.5:
            img, alpha = img[:, ::-1], alpha[:, ::-1]
            pixels = np.column_stack([size - 1 - pixels[:, 0], pixels[:, 1]])[IBUG68_MIRROR]
        matrix = jitter_matrix(rng, size, spec)
        img = cv2.warpAffine(np.ascontiguousarray(img), matrix, (size, size), flags=cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE)
        alpha = cv2.warpAffine(np.ascontiguousarray(alpha), matrix, (size, size),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        pixels = pixels @ matrix[:, :2].T + matrix[:, 2]
        img = photometric(img, rng, spec)
    return (np.ascontiguousarray(img), ((pixels + 0.5) / size).astype(np.float32),
            point_visibility(alpha, pixels))


def student_batch(faces: FaceSet, points: np.ndarray, indices, epoch: int, seed: int,
                  size: int, spec: AugmentSpec | None, input_spec: InputSpec
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    images, targets, visible = [], [], []
    for i in indices:
        img, pts, vis = student_sample(faces.images[i], points[i], sample_rng(seed, epoch, i), size, spec)
        images.append(img)
        targets.append(pts)
        visible.append(vis)
    return prepare_batch(images, input_spec), np.stack(targets), np.stack(visible)


# ------------------------------------------------------------------ metrics
def nme(pred: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over faces of the mean point error (over `mask`ed points) / inter-ocular distance."""
    iod = np.linalg.norm(target[:, IOD_POINTS[0]] - target[:, IOD_POINTS[1]], axis=1)
    err = np.linalg.norm(pred - target, axis=2) / np.maximum(iod, 1e-6)[:, None]
    if mask is None:
        return float(err.mean())
    counted = mask.sum(axis=1)
    rows = counted > 0
    if not rows.any():
        return float("nan")
    return float(((err * mask).sum(axis=1)[rows] / counted[rows]).mean())


def student_loss(points: torch.Tensor, logits: torch.Tensor, target: torch.Tensor,
                 visible: torch.Tensor, visibility_weight: float) -> torch.Tensor:
    """L1 on the points scaled by each face's inter-ocular distance (the NME it is scored by),
    plus BCE on the visibility of each point."""
    iod = (target[:, IOD_POINTS[0]] - target[:, IOD_POINTS[1]]).norm(dim=1).clamp_min(1e-3)
    point_loss = ((points - target).abs().sum(dim=2) / iod[:, None]).mean()
    return point_loss + visibility_weight * F.binary_cross_entropy_with_logits(logits, visible)


def run_student(session, images: list[np.ndarray] | np.ndarray, spec: InputSpec,
                batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    points, visibility = [], []
    for s in range(0, len(images), batch):
        p, v = session.run(["landmarks68", "visibility"],
                           {session.get_inputs()[0].name: prepare_batch(images[s:s + batch], spec)})
        points.append(p)
        visibility.append(v)
    return np.concatenate(points), np.concatenate(visibility)


def evaluate_student(onnx_path: Path, data_root: Path, out_dir: Path, first: int | None = None,
                     occlusion_dir: Path | None = None, progress: bool = True,
                     teacher=None) -> dict[str, Any]:
    """The NME table of student, teacher and mean shape (see the module docstring)."""
    from app.runtime.providers import create_session
    from training.evaluate import default_occlusion_dir
    from training.perception.evaluate import occluded_images
    from training.perception.teacher import teacher_points
    from training.perception.train import teacher_landmarker

    teacher = teacher or teacher_landmarker()
    faces, target = teacher68("test", data_root, None, first=first, progress=progress, teacher=teacher)
    session = create_session(onnx_path, "cpu")
    spec = InputSpec.from_manifest(json.loads(session.get_modelmeta().custom_metadata_map["input"]))
    landmarker = teacher[0]
    mean_shape = np.broadcast_to(FERPLUS_LANDMARKS68, target.shape)
    occlusion_dir = occlusion_dir or default_occlusion_dir()
    report: dict[str, Any] = {"model": str(onnx_path), "n": len(faces), "dropped": faces.dropped,
                              "target": "FaceMesh teacher on the clean face, iBUG-68",
                              "normaliser": "inter-ocular distance (outer eye corners 36-45)",
                              "sets": {}}
    for kind in ("none", *TEST_SET_KINDS):
        if kind == "none":
            images, alphas, origin = faces.images, np.zeros(faces.images.shape, np.float32), "clean"
        else:
            images, alphas, origin = occluded_images(faces, kind, occlusion_dir)
        size = images.shape[1]
        hidden = np.stack([1.0 - point_visibility(a, t * size - 0.5, outside=1.0)
                           for a, t in zip(alphas, target)])
        student, visibility = run_student(session, list(images), spec)
        teacher = np.concatenate([
            facemesh68_batch(teacher_points(landmarker, images[s:s + 64])[0])
            for s in tqdm(range(0, len(images), 64), desc=f"teacher on {kind}", disable=not progress,
                          file=sys.stderr, leave=False)])
        row = {"origin": origin, "hidden_point_share": round(float(hidden.mean()), 4)}
        for who, pred in (("student", student), ("teacher", teacher), ("mean_shape", mean_shape)):
            row[f"{who}_nme"] = round(nme(pred, target), 5)
            if hidden.any():
                row[f"{who}_nme_hidden"] = round(nme(pred, target, hidden), 5)
        if hidden.any():
            predicted_hidden = visibility < 0.5
            truth = hidden > 0.5
            row["visibility_accuracy"] = round(float((predicted_hidden == truth).mean()), 4)
            row["hidden_recall"] = round(float(predicted_hidden[truth].mean()), 4)
        else:
            row["visible_flagged_hidden"] = round(float((visibility < 0.5).mean()), 4)
        report["sets"][kind] = row
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_nme(report, out_dir / "nme.png")
    return report


def facemesh68_batch(points468: np.ndarray) -> np.ndarray:
    return np.stack([facemesh_to_ibug68(p) for p in points468]).astype(np.float32)


def plot_nme(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(report["sets"])
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.27
    for j, who in enumerate(("teacher", "student", "mean_shape")):
        values = [report["sets"][k][f"{who}_nme"] * 100 for k in kinds]
        ax.bar(np.arange(len(kinds)) + (j - 1) * width, values, width, label=who.replace("_", " "))
    ax.set_xticks(np.arange(len(kinds)), ["clean" if k == "none" else k for k in kinds])
    ax.set_ylabel("NME (% of inter-ocular distance)")
    ax.set_title(f"68 landmarks vs FaceMesh on the clean face (FERPlus test, n={report['n']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ training
def _validate(model: LandmarkStudent, val: tuple[np.ndarray, np.ndarray, np.ndarray]) -> float:
    x, target, _ = val
    model.eval()
    with torch.no_grad():
        points = torch.cat([model(torch.from_numpy(x[s:s + 256]))[0] for s in range(0, len(x), 256)])
    model.train()
    return nme(points.numpy(), target)


def train_student(data_root: Path, out_dir: Path, recipe: StudentRecipe = StudentRecipe(),
                  seed: int = 0, resume: bool = False, progress: bool = True,
                  limit: int | None = None, epochs: int | None = None, teacher=None) -> Path:
    """Train (resumably: `last.pt` after every epoch), export, evaluate; returns the ONNX."""
    recipe = StudentRecipe(**{**asdict(recipe), **({"limit": limit} if limit else {}),
                              **({"epochs": epochs} if epochs else {})})
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    input_spec = InputSpec(size=recipe.size, color="gray", channels=1)
    faces, points = teacher68("train", data_root, recipe.limit, seed=seed, progress=progress,
                              teacher=teacher)
    val_faces, val_points = teacher68("valid", data_root, None, first=recipe.val_faces,
                                      progress=progress, teacher=teacher)
    val = student_batch(val_faces, val_points, range(len(val_faces)), 0, seed + 1, recipe.size,
                        AugmentSpec(p_clean=recipe.p_clean, flip=False, rotate_deg=0.0, scale=0.0,
                                    shift=0.0, contrast=(1.0, 1.0), brightness=0.0), input_spec)
    model = LandmarkStudent(in_chans=1, img_size=recipe.size, width=recipe.width, hidden=recipe.hidden)
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = len(faces) // recipe.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, recipe.lr, epochs=recipe.epochs,
                                                   steps_per_epoch=steps_per_epoch, pct_start=0.1)
    state = {"epoch": 0, "best": float("inf"), "history": [], "seconds": 0.0}
    last = out_dir / "last.pt"
    if resume and last.is_file():
        saved = torch.load(last, weights_only=False)
        if saved["recipe"] != asdict(recipe):
            raise SystemExit(f"{last} was trained with another recipe; use a new --out")
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        schedule.load_state_dict(saved["schedule"])
        state = saved["state"]
    spec = AugmentSpec(p_clean=recipe.p_clean)
    for epoch in range(state["epoch"], recipe.epochs):
        started = time.perf_counter()
        order = np.random.default_rng([seed, epoch, 7]).permutation(len(faces))
        total = 0.0
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{recipe.epochs}",
                   disable=not progress, file=sys.stderr, mininterval=2.0)
        for step in bar:
            idx = order[step * recipe.batch_size:(step + 1) * recipe.batch_size]
            x, target, visible = student_batch(faces, points, idx, epoch, seed, recipe.size, spec, input_spec)
            pred, logits = model(torch.from_numpy(x))
            loss = student_loss(pred, logits, torch.from_numpy(target), torch.from_numpy(visible),
                                recipe.visibility_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += float(loss)
            bar.set_postfix(loss=f"{total / (step + 1):.4f}")
        bar.close()
        val_nme = _validate(model, val)
        state["seconds"] += time.perf_counter() - started
        state["history"].append({"epoch": epoch + 1, "train_loss": round(total / steps_per_epoch, 5),
                                 "valid_nme": round(val_nme, 5),
                                 "minutes": round((time.perf_counter() - started) / 60, 2)})
        print(f"epoch {epoch + 1}/{recipe.epochs}: loss {total / steps_per_epoch:.4f} | "
              f"valid NME (occluded, 30 % clean) {val_nme * 100:.2f} %", file=sys.stderr)
        if val_nme < state["best"]:
            state["best"] = val_nme
            torch.save({"model": model.state_dict(), "recipe": asdict(recipe), "epoch": epoch + 1}, out_dir / "best.pt")
        state["epoch"] = epoch + 1
        tmp = last.with_suffix(".part")
        torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                    "schedule": schedule.state_dict(), "state": state, "recipe": asdict(recipe)}, tmp)
        os.replace(tmp, last)
    best = torch.load(out_dir / "best.pt", weights_only=False)
    model.load_state_dict(best["model"])
    onnx_path = export_student(model.eval(), input_spec, out_dir / f"{NAME}.onnx", val[0][:64])
    (out_dir / "train_state.json").write_text(json.dumps({**state, "recipe": asdict(recipe),
                                                          "best_epoch": best["epoch"],
                                                          "train_faces": len(faces),
                                                          "dropped": faces.dropped}, indent=2) + "\n")
    return onnx_path


def export_student(model: LandmarkStudent, spec: InputSpec, out: Path, check: np.ndarray,
                   fp16: bool = True) -> Path:
    """ONNX with `landmarks68` (N, 68, 2) fractions and `visibility` (N, 68); parity with
    torch checked on `check` (max point difference < 2e-3 of the side in fp16, 1e-4 fp32)."""
    import onnx

    from app.runtime.providers import create_session
    from exporters.classifier import store_weights_fp16

    wrapper = LandmarkStudentExport(model).eval()
    tmp = out.with_suffix(".tmp.onnx")
    torch.onnx.export(wrapper, (torch.from_numpy(check[:2]),), str(tmp), input_names=["input"],
                      output_names=["landmarks68", "visibility"], opset_version=17, dynamo=False,
                      dynamic_axes={"input": {0: "batch"}, "landmarks68": {0: "batch"},
                                    "visibility": {0: "batch"}})
    proto = onnx.load(str(tmp))
    if fp16:
        store_weights_fp16(proto)
    for key, value in {"model_name": NAME, "input": json.dumps(spec.to_manifest()),
                       "outputs": json.dumps({"landmarks68": "(N, 68, 2) iBUG-68 points, fractions "
                                              "of the crop side from its outer edge",
                                              "visibility": "(N, 68) P(point not occluded)"}),
                       "weights_dtype": "float16 (float32 compute)" if fp16 else "float32"}.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.save(proto, str(out))
    tmp.unlink(missing_ok=True)
    session = create_session(out, "cpu", 1)
    got, _ = session.run(None, {"input": check})
    with torch.no_grad():
        want = wrapper(torch.from_numpy(check))[0].numpy()
    diff = float(np.abs(got - want).max())
    if diff > (2e-3 if fp16 else 1e-4):
        raise RuntimeError(f"ONNX and torch landmarks differ by {diff} of the crop side")
    return out


# ------------------------------------------------------------------ card and publishing
def write_card(path: Path, report: dict[str, Any], state: dict[str, Any], command: str,
               onnx_path: Path) -> None:
    from training.evaluate import sha256_file

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=REPO_ROOT, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    rows = []
    for kind, row in report["sets"].items():
        name = "clean" if kind == "none" else kind
        hidden = row.get("student_nme_hidden")
        rows.append(f"| {name} | {row['teacher_nme'] * 100:.2f} | {row['student_nme'] * 100:.2f} | "
                    f"{row['mean_shape_nme'] * 100:.2f} | "
                    + (f"{row['teacher_nme_hidden'] * 100:.2f} | {hidden * 100:.2f} | "
                       f"{row['hidden_point_share'] * 100:.1f} % |" if hidden is not None else "– | – | 0 % |"))
    recipe = state["recipe"]
    history = "\n".join(f"| {h['epoch']} | {h['train_loss']:.4f} | {h['valid_nme'] * 100:.2f} | {h['minutes']} |"
                        for h in state["history"])
    text = f"""# {NAME} — occlusion-robust 68-point landmarks

| | |
|---|---|
| Network | `models/landmark_student.py`: stride-2 CNN (widths {recipe['width']}–{recipe['width'] * 4}), 4×4 map flattened, {recipe['hidden']}-d hidden layer, 68 × (dx, dy, visibility) around the FERPlus mean shape |
| Input | `input` (N, 1, {recipe['size']}, {recipe['size']}) float32 gray aligned face (FERPlus framing), (x − 127.5) / 127.5 |
| Outputs | `landmarks68` (N, 68, 2) iBUG-68 points as fractions of the crop side; `visibility` (N, 68) P(point not occluded) |
| File | `{onnx_path.name}` (fp16 weights, {onnx_path.stat().st_size / 1e6:.2f} MB, sha256 `{sha256_file(onnx_path)}`) |
| Licence | {LICENCE} |

## Accuracy (FERPlus test, n = {report['n']}; targets: FaceMesh on the clean face)

NME in % of the inter-ocular distance (outer eye corners). "hidden" = only the points the
occluder covers. Teacher = FaceMesh run on the occluded face; mean shape = always answering
the FERPlus mean face (the floor any landmark model must beat).

| test set | teacher NME | student NME | mean shape NME | teacher NME hidden | student NME hidden | hidden points |
|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Reproduce the evaluation: `python -m training.landmark_student --data-root FERPLUS --evaluate assets/models/{NAME}.onnx --out reports/{NAME}`.

## Training

- Command: `{command}`
- Code: git commit {commit}
- Data: FERPlus train, a seeded subset of {recipe['limit']} faces ({state['train_faces']} with teacher presence ≥ 0.5), validation on the first {recipe['val_faces']} FER2013Valid faces with fixed occluders; synthetic occluders of all eight kinds on {100 - recipe['p_clean'] * 100:.0f} % of the faces; flip, rotation, scale, shift and photometric jitter
- Targets: FaceMesh 468 (`facemesh_468`, two passes on the 4× upscaled crop, cached) → iBUG-68 on the clean face
- Epochs: {len(state['history'])} (best {state['best_epoch']}); batch {recipe['batch_size']}, AdamW lr {recipe['lr']} one-cycle, wd {recipe['weight_decay']}; loss: L1 / inter-ocular distance + {recipe['visibility_weight']} × visibility BCE
- Hardware: {platform.machine()} {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads), CPU
- Wall time: {state['seconds'] / 60:.1f} min of training

| epoch | train loss | valid NME % | minutes |
|---|---|---|---|
{history}

## Limits
- The targets are FaceMesh's answers, not human annotations: the student can at best match the
  teacher on clean faces; its gain is under occlusion, where it keeps the teacher-on-clean shape.
- FERPlus crops are 48 px; the network runs at {recipe['size']} px on the upscaled aligned crop.
- Visibility is learnt from synthetic occluders only.
"""
    path.write_text(text)


def publish(onnx_path: Path, card: Path, report: dict[str, Any], manifest: Path | None = None) -> None:
    from app.runtime.store import default_manifest_path
    from exporters.manifest import copy_into_assets, register_model_entry
    from training.evaluate import sha256_file

    manifest_path = Path(manifest) if manifest else default_manifest_path()
    onnx_copy, _ = copy_into_assets(NAME, onnx_path, card, manifest_path)
    sets = report["sets"]
    occluded = [k for k in sets if k != "none"]
    register_model_entry(NAME, {
        "task": "landmarks68",
        "file": f"models/{NAME}.onnx",
        "sha256": sha256_file(onnx_copy),
        "licence": LICENCE,
        "description": (
            "occlufer's occlusion-robust 68-point landmark student (64 px gray aligned face): "
            "trained on synthetically occluded FERPlus faces to give FaceMesh's clean-face "
            f"points, plus per-point visibility. NME clean {sets['none']['student_nme'] * 100:.2f} %, "
            "occluded mean "
            f"{np.mean([sets[k]['student_nme'] for k in occluded]) * 100:.2f} % (FaceMesh on the "
            f"occluded faces: {np.mean([sets[k]['teacher_nme'] for k in occluded]) * 100:.2f} %). "
            "Reproduce: occlufer train-landmarks (see the card)."),
        "sources": [{"kind": "asset"}],
        "input": InputSpec(size=64, color="gray", channels=1).to_manifest(),
        "classes": [],  # a landmark model: no classes (the manifest asks every entry for the key)
        "outputs": ["landmarks68", "visibility"],
        "card": f"cards/{NAME}.md",
        "metrics": {"nme": {k: {w: sets[k][f"{w}_nme"] for w in ("student", "teacher", "mean_shape")}
                            for k in sets}, "n": report["n"]},
    }, manifest_path)


# ------------------------------------------------------------------ CLI
def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-root", required=True, type=Path, help="FERPlus root")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"run folder (default ~/.cache/occlufer/runs/{NAME})")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--limit", type=int, default=None, help="training faces (default 12000)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--evaluate", type=Path, default=None,
                        help="only evaluate this ONNX (writes OUT/report.json and nme.png)")
    parser.add_argument("--test-first", type=int, default=None, help="evaluate on the first N test faces")
    parser.add_argument("--no-register", dest="register", action="store_false",
                        help="do not copy into assets/ and the manifest")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="occlufer train-landmarks", description=__doc__.splitlines()[0])
    add_args(parser)
    args = parser.parse_args(argv)
    out = args.out or Path.home() / ".cache" / "occlufer" / "runs" / NAME
    if args.evaluate:
        report = evaluate_student(args.evaluate, args.data_root, out, first=args.test_first)
        print(json.dumps(report["sets"], indent=2))
        return 0
    started = time.perf_counter()
    onnx_path = train_student(args.data_root, out, resume=args.resume, limit=args.limit, epochs=args.epochs)
    report = evaluate_student(onnx_path, args.data_root, out / "report", first=args.test_first)
    state = json.loads((out / "train_state.json").read_text())
    command = "occlufer train-landmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    card = out / f"{NAME}.md"
    write_card(card, report, state, command, onnx_path)
    if args.register:
        publish(onnx_path, card, report)
    print(json.dumps(report["sets"], indent=2))
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min: {onnx_path}, card {card}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
