"""Score an exported expression model (ONNX) on a labelled split, the way the app runs it.

No torch here: the model runs in onnxruntime through `app.runtime.providers.create_session`,
and its pixels go through `app.pipeline.preprocess.prepare_batch` with the InputSpec stored in
the ONNX file's own metadata, so the number reported is the number a user gets live.

Occluded FERPlus test sets (`--occlusion masked|sunglasses|objects|hands|...`) are read from
`occlusion_dir/<kind>/` and built there with `training.occlusion.write_test_sets` the first
time they are asked for (default `$OCCLUFER_CACHE/occlusion_sets`, else
`~/.cache/occlufer/occlusion_sets`).

Outputs in `report_dir`: `report.json` and `confusion_matrix.png` (rows = true class,
normalised to 1, each cell also showing its count).

A prior-guided model (ORSANet: extra inputs `landmarks68`, `parsing`) is fed by `priors`:
- "runtime" (default): what the app feeds - the landmark student's 68 points and the
  occlusion stage's map, both run on the (occluded) test crop, through
  `app.pipeline.priors.prior_feeds`;
- "oracle": the FaceMesh teacher's points on the *clean* crop and the occluder's true mask
  (what training saw: the ceiling our perception stages could reach);
- "template": nothing (the export's FERPlus-template defaults).
The gap oracle - runtime is what imperfect perception costs; runtime - template is what the
priors are worth at run time.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from app.errors import DatasetError, OccluferError
from app.pipeline.expression import prior_input_types
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.store import sha256_of as sha256_file  # the one sha256 of a file
from app.runtime.providers import create_session, session_provider
from training.data import load_split
from app.occlusion import KINDS as OCCLUDER_KINDS
from training.calibration import expected_calibration_error, reliability_diagram

CLEAN = ("none", "clean", "")
PRIOR_SOURCES = ("runtime", "oracle", "template")


def default_occlusion_dir() -> Path:
    """$OCCLUFER_CACHE/occlusion_sets, else ~/.cache/occlufer/occlusion_sets (XDG)."""
    if os.environ.get("OCCLUFER_CACHE"):
        return Path(os.environ["OCCLUFER_CACHE"]) / "occlusion_sets"
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "occlufer" / "occlusion_sets"


def model_metadata(session) -> tuple[InputSpec, tuple[str, ...], dict[str, str]]:
    """InputSpec and class names from the model's ONNX metadata (written by the exporter)."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "input" not in meta or "classes" not in meta:
        raise OccluferError("this ONNX file has no occlufer metadata (`input`, `classes`); "
                            "export it with exporters/classifier.py")
    spec = InputSpec.from_manifest(json.loads(meta["input"]))
    return spec, tuple(json.loads(meta["classes"])), meta


#: seed of the validation copies temperatures are fitted on (the test sets are drawn with 0)
VALID_COPIES_SEED = 1


def default_valid_copies_dir() -> Path:
    """Beside the test sets: `.../occlusion_sets_valid`."""
    return default_occlusion_dir().with_name("occlusion_sets_valid")


def valid_copies(ferplus_root: Path, out_dir: Path | None = None, build: bool = True,
                 names: Sequence[str] | None = None) -> list[tuple[str, Path]]:
    """(kind, FERPlus root) of FER2013Valid under each occluder and camera degradation the
    test sets have, with the images of `names` (default: the whole split) built where missing
    (seed `VALID_COPIES_SEED`; about 5 min on 2 cores for the whole split). What
    `training.calibration` fits a temperature on beside the clean faces."""
    from training.data.ferplus import SPLIT_FOLDERS, read_votes
    from training.occlusion import EVALUATED_SETS, write_test_sets

    base = Path(out_dir) if out_dir else default_valid_copies_dir()
    folder = SPLIT_FOLDERS["valid"]
    if names is None:
        names = read_votes(Path(ferplus_root), "valid")[0]
    for kind in EVALUATED_SETS:
        missing = [n for n in names if not (base / kind / folder / n).is_file()]
        if not missing:
            continue
        if not build:
            raise DatasetError(f"the validation copy {kind} is not (completely) in {base}; "
                               f"build the copies with `python -m training.occlusion --data-root "
                               f"{ferplus_root} --split valid --seed {VALID_COPIES_SEED} "
                               f"--out {base}`")
        write_test_sets(Path(ferplus_root), base, [kind], split="valid", seed=VALID_COPIES_SEED,
                        only=missing, progress=len(missing) > 500)
    return [(k, base / k) for k in EVALUATED_SETS]


def shifted_valid_images(ferplus_root: Path, names: Sequence[str], out_dir: Path | None = None
                         ) -> list[tuple[str, np.ndarray]]:
    """(kind, uint8 gray faces in `names` order) of the validation copies (`valid_copies`),
    built where missing; their labels are the clean faces' labels."""
    from training.data.base import FileImage
    from training.data.ferplus import SPLIT_FOLDERS

    folder = SPLIT_FOLDERS["valid"]
    return [(kind, np.stack([FileImage(root / folder / n).read(gray=True) for n in names]))
            for kind, root in valid_copies(ferplus_root, out_dir, names=names)]


def occluded_set_ready(kind_root: Path, split_folder: str) -> bool:
    """True when every image listed in the set's label.csv has been written (a build that
    was killed halfway leaves fewer PNGs than label rows and is built again)."""
    folder = kind_root / split_folder
    labels = folder / "label.csv"
    if not labels.is_file():
        return False
    rows = sum(1 for line in labels.read_text().splitlines() if line.strip())
    return sum(1 for _ in folder.glob("*.png")) >= rows


def occluded_root(ferplus_root: Path, kind: str, split: str = "test",
                  occlusion_dir: Path | None = None, build: bool = True) -> Path:
    """The FERPlus root of the `kind`-occluded copy of `split`, built first if missing."""
    from training.data.ferplus import SPLIT_FOLDERS
    from training.occlusion import SET_KINDS, write_test_sets

    if kind not in SET_KINDS:
        raise OccluferError(f"unknown test set {kind!r}; use none or one of "
                            f"{', '.join(SET_KINDS)}")
    base = Path(occlusion_dir) if occlusion_dir else default_occlusion_dir()
    root = base / kind
    if not occluded_set_ready(root, SPLIT_FOLDERS[split]):
        if not build:
            raise DatasetError(f"occluded set {root} does not exist; build it with "
                               f"`occlufer occlude --data-root {ferplus_root} --out {base}`")
        write_test_sets(Path(ferplus_root), base, [kind], split=split)
    return root


def available_test_sets(ferplus_root: Path, kinds: Sequence[str],
                        occlusion_dir: Path | None = None, build: bool = False) -> list[str]:
    """The `kinds` whose test copy exists (built first when `build`): reports score what is
    there and say what is not, rather than fail a finished training over a missing set."""
    present = []
    for kind in kinds:
        try:
            occluded_root(ferplus_root, kind, "test", occlusion_dir, build=build)
        except DatasetError:
            continue
        present.append(kind)
    return present


def predict_outputs(session, images: Sequence[np.ndarray] | np.ndarray, spec: InputSpec,
                    batch: int = 256, desc: str = "evaluating",
                    priors: dict[str, np.ndarray] | None = None,
                    outputs: Sequence[str] = ("probs",)) -> dict[str, np.ndarray]:
    """The named outputs (N, ...) for uint8 crops, in batches, with a progress bar; `priors`
    are (N, ...) arrays for the model's extra inputs (left out: the export's defaults)."""
    name = session.get_inputs()[0].name
    dtypes = prior_input_types(session)
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in outputs}
    with tqdm(total=len(images), desc=desc, unit="img", file=sys.stderr,
              disable=None, leave=False) as bar:
        for start in range(0, len(images), batch):
            crops = images[start:start + batch]
            feeds = {name: prepare_batch(crops, spec)}
            feeds.update({k: np.asarray(v[start:start + batch], dtypes[k])
                          for k, v in (priors or {}).items()})
            for key, value in zip(outputs, session.run(list(outputs), feeds)):
                chunks[key].append(np.asarray(value, np.float32))
            bar.update(len(crops))
    return {k: np.concatenate(v) if v else np.zeros((0, 0), np.float32)
            for k, v in chunks.items()}


def predict(session, images: Sequence[np.ndarray] | np.ndarray, spec: InputSpec,
            batch: int = 256, desc: str = "evaluating",
            priors: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """(N, C) probabilities (see `predict_outputs`)."""
    return predict_outputs(session, images, spec, batch, desc, priors)["probs"]


def occlusion_map_scores(maps: np.ndarray, masks: np.ndarray | None) -> dict[str, float]:
    """How well a model's own occlusion map (N, h, w) of P(hidden) finds the occluder: the
    map is upsampled (bilinear) to the masks' size and thresholded at 0.5, then pixel IoU,
    F1, precision and recall against the true masks (N, H, W) in [0, 1] - the perception
    stage's measures (`training.perception.evaluate.binary_scores`). Without masks (a clean
    set) the pixel false-positive rate."""
    from training.perception.evaluate import binary_scores

    maps = maps.reshape(len(maps), *maps.shape[-2:])
    side = masks.shape[1:] if masks is not None else (48, 48)
    prob = np.stack([cv2.resize(m, side[::-1], interpolation=cv2.INTER_LINEAR) for m in maps])
    if masks is None:
        return {"pixel_false_positive_rate": round(float((prob > 0.5).mean()), 5)}
    return {k: round(v, 4) for k, v in binary_scores(prob, masks).items()}


def _occluder_masks(root: Path, names: Sequence[str]) -> np.ndarray:
    masks = []
    for n in names:
        path = root / "masks" / f"{Path(n).stem}.png"
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None:
            raise DatasetError(f"occluder mask missing: {path}; rebuild the set with "
                               "`occlufer occlude`")
        masks.append(mask.astype(np.float32) / 255.0)
    return np.stack(masks)


def evaluation_priors(source: str, input_names: Sequence[str], size: int, images: np.ndarray,
                      *, dataset: str, split: str, names: Sequence[str], clean_root: Path,
                      occluded_root_dir: Path | None, device: str = "cpu",
                      batch: int = 256, teacher=None) -> dict[str, np.ndarray] | None:
    """(N, ...) feeds for a prior-guided model's `input_names` from `source` (see the module
    docstring), None for "template". `teacher` is (FaceMeshLandmarker, ONNX path) for
    "oracle" (default: the installed `facemesh_468`)."""
    from app.pipeline.priors import prior_feeds

    if source not in PRIOR_SOURCES:
        raise OccluferError(f"unknown prior source {source!r}; choose one of {PRIOR_SOURCES}")
    if source == "template" or not input_names:
        return None
    landmarks: list[np.ndarray | None] = []
    hidden: list[np.ndarray | None] = []
    if source == "runtime":
        from app.pipeline.landmarks_student import StudentLandmarker
        from app.pipeline.occlusion_map import OcclusionParsingModel

        student = StudentLandmarker.from_store(device=device)  # type: ignore[arg-type]
        parser = OcclusionParsingModel.from_store(device=device)  # type: ignore[arg-type]
        for start in tqdm(range(0, len(images), batch), desc="priors (student + occlusion)",
                          unit="batch", file=sys.stderr, disable=None, leave=False):
            crops = list(images[start:start + batch])
            points, _ = student(crops)
            occlusion, _ = parser.predict(crops)
            landmarks += list(points)
            hidden += list(occlusion)
    else:
        from training.perception.teacher import teacher_landmarks68

        clean = load_split(dataset, clean_root, split, "majority", progress=False)
        where = {n: i for i, n in enumerate(clean.names)}
        try:
            clean_images = clean.images[[where[n] for n in names]]
        except KeyError as exc:
            raise DatasetError(f"oracle priors: {exc} is not in the clean split at {clean_root}")
        points, _ = teacher_landmarks68(dataset, split, names, clean_images, teacher=teacher)
        landmarks = list((points + 0.5) / clean_images.shape[1])
        hidden = (list(_occluder_masks(occluded_root_dir, names)) if occluded_root_dir
                  else [None] * len(names))
    return prior_feeds(tuple(input_names), size, landmarks, hidden)


def classification_metrics(true: np.ndarray, pred: np.ndarray, n_true: int,
                           n_pred: int) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class recall from integer labels.

    `true` indexes the data set's classes and `pred` the model's, already mapped so equal
    indices mean the same class (extra model classes sit after the data set's). Macro-F1
    averages over the classes present in the truth or the predictions (scikit-learn's
    default), so a class nobody has and nobody predicts does not count as F1 = 0.
    """
    confusion = np.zeros((n_true, n_pred), np.int64)
    np.add.at(confusion, (true, pred), 1)
    n = int(len(true))
    correct = int(sum(confusion[i, i] for i in range(min(n_true, n_pred))))
    f1s = []
    for c in range(max(n_true, n_pred)):
        tp = int(confusion[c, c]) if c < min(n_true, n_pred) else 0
        support = int(confusion[c].sum()) if c < n_true else 0
        predicted = int(confusion[:, c].sum()) if c < n_pred else 0
        if support == 0 and predicted == 0:
            continue
        f1s.append(2.0 * tp / (support + predicted))
    recall = [float(confusion[c, c] / confusion[c].sum() * 100.0)
              if confusion[c].sum() and c < n_pred else None for c in range(n_true)]
    return {"accuracy": correct / n * 100.0 if n else 0.0,
            "macro_f1": float(np.mean(f1s) * 100.0) if f1s else 0.0,
            "per_class_recall": recall, "confusion": confusion, "n": n, "correct": correct}


def plot_confusion(confusion: np.ndarray, true_names: Sequence[str], pred_names: Sequence[str],
                   title: str, path: Path) -> Path:
    """Row-normalised confusion matrix with percent and count in every cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * len(pred_names), 1.2 + 0.8 * len(true_names)),
                           dpi=110)
    ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(confusion.shape[0]):
        for j in range(confusion.shape[1]):
            ax.text(j, i, f"{share[i, j] * 100:.0f}%\n{confusion[i, j]}", ha="center",
                    va="center", fontsize=7, color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(pred_names)), pred_names, rotation=45, ha="right")
    ax.set_yticks(range(len(true_names)),
                  [f"{name} ({int(r)})" for name, r in zip(true_names, rows[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true (count)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def evaluate(onnx_path: Path, dataset: str, root: Path, split: str = "test",
             occlusion: str | None = None, occlusion_dir: Path | None = None,
             report_dir: Path | None = None, device: str = "cpu", batch: int = 256,
             limit: int | None = None, build_occluded: bool = True,
             priors: str = "runtime", teacher=None) -> dict[str, Any]:
    """Run `onnx_path` on `dataset`/`split` (optionally an occluded copy) and report.

    Returns the report dict (also written to `report_dir/report.json` with
    `confusion_matrix.png` beside it). `limit` scores only the first N images (tests);
    `priors` feeds a prior-guided model (module docstring; ignored by the others), `teacher`
    is the landmark teacher for oracle priors (default: the installed one).
    """
    onnx_path, root = Path(onnx_path), Path(root).expanduser()
    report_dir = Path(report_dir) if report_dir else onnx_path.parent / "reports" / split
    occlusion = None if occlusion is None or occlusion.lower() in CLEAN else occlusion
    session = create_session(onnx_path, device)
    spec, model_classes, meta = model_metadata(session)

    data_root = root
    if occlusion is not None:
        if dataset.lower() != "ferplus":
            raise OccluferError("occluded test sets are built from FERPlus; use --dataset ferplus")
        data_root = occluded_root(root, occlusion, split, occlusion_dir, build=build_occluded)
    data = load_split(dataset, data_root, split, "majority")
    images, labels, names = data.images, data.labels, list(data.names)
    if limit is not None:
        images, labels, names = images[:limit], labels[:limit], names[:limit]
    extra = tuple(prior_input_types(session))
    feeds = evaluation_priors(priors, extra, spec.size, images, dataset=dataset, split=split,
                              names=names, clean_root=root,
                              occluded_root_dir=data_root if occlusion else None,
                              device=device, batch=batch, teacher=teacher)

    # Model classes may be a superset (8-way model on a 7-class folder) or in another order:
    # match by name; predictions of classes the data set lacks count as wrong.
    pred_names = [c for c in data.classes if c in model_classes] + \
                 [c for c in model_classes if c not in data.classes]
    to_report = np.array([pred_names.index(c) for c in model_classes])
    if any(c not in model_classes for c in data.classes):
        missing = [c for c in data.classes if c not in model_classes]
        raise OccluferError(f"the model has no class {', '.join(missing)} that the data set uses")

    started = time.perf_counter()
    has_map = "occlusion" in [o.name for o in session.get_outputs()]
    outputs = predict_outputs(session, images, spec, batch, desc=f"eval {occlusion or 'clean'}",
                              priors=feeds, outputs=("probs", "occlusion") if has_map else ("probs",))
    probs = outputs["probs"]
    seconds = time.perf_counter() - started
    pred = to_report[probs.argmax(axis=1)]
    metrics = classification_metrics(labels, pred, len(data.classes), len(pred_names))
    recall = metrics["per_class_recall"]
    # calibration of the probabilities as shipped (top-class confidence vs being right)
    label_in_model = np.array([list(model_classes).index(c) for c in data.classes])[labels]
    calibration = expected_calibration_error(probs, label_in_model)
    report = {
        "accuracy": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "ece": calibration["ece"],
        "mean_confidence": calibration["mean_confidence"],
        "reliability": calibration["bins"],
        "per_class_accuracy": {name: recall[i] for i, name in enumerate(data.classes)},
        "per_class_count": {name: int(metrics["confusion"][i].sum())
                            for i, name in enumerate(data.classes)},
        "n": metrics["n"],
        "correct": metrics["correct"],
        "dataset": dataset,
        "root": str(root),
        "split": split,
        "occlusion": occlusion or "none",
        "occlusion_root": str(data_root) if occlusion else None,
        "priors": priors if extra else None,
        # a model that predicts its own occlusion map (mask-aware) is scored on it too
        "occlusion_map": (occlusion_map_scores(outputs["occlusion"], _occluder_masks(
            data_root, names) if occlusion in OCCLUDER_KINDS else None) if has_map else None),
        "classes": list(data.classes),
        "model_classes": list(model_classes),
        "confusion": metrics["confusion"].tolist(),
        "confusion_columns": pred_names,
        "model": str(onnx_path),
        "model_name": meta.get("model_name"),
        "model_sha256": sha256_file(onnx_path),
        "input": spec.to_manifest(),
        "provider": session_provider(session),
        "images_per_second": metrics["n"] / seconds if seconds > 0 else None,
    }
    report_dir.mkdir(parents=True, exist_ok=True)
    tmp = report_dir / "report.json.part"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, report_dir / "report.json")
    title = (f"{meta.get('model_name', onnx_path.stem)} on {dataset} {split}"
             f"{'' if occlusion is None else ' + ' + occlusion}"
             f"{f' ({priors} priors)' if extra else ''}: "
             f"{report['accuracy']:.2f}% (n={report['n']})")
    plot_confusion(metrics["confusion"], data.classes, pred_names, title,
                   report_dir / "confusion_matrix.png")
    reliability_diagram(calibration, report_dir / "reliability.png", title)
    return report
