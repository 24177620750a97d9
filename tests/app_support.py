"""Real inputs for the app tests: a face video, expression ONNX models and a model store.

Nothing here is mocked. The video is made from real faces (scikit-image's astronaut and
FERPlus test faces, upscaled the way the alignment template was measured); the expression
models are real torch networks exported to ONNX with `probs` and `cam` outputs, and the store
is a real `ModelStore` reading a manifest in a temporary folder (the repository's manifest
is never touched).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import cv2
import numpy as np

from app import ASSETS_DIR

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
        dx = int(30 * np.sin(i / 12.0))
        y0, x0 = 110 + int(10 * np.cos(i / 15.0)), 40 + dx
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
def export_expression_model(path: Path, classes: tuple[str, ...], size: int, channels: int,
                            seed: int = 0) -> Path:
    """A small CNN (conv features, global average pooling, linear head) exported with `probs`
    (N, C) and `cam` (N, C, h, w): the CAM is the classifier's weights applied to the last
    feature map, min-max normalised per class, as the app expects from every expression model."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class TinyExpressionNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                nn.Conv2d(channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
            self.head = nn.Linear(32, len(classes))

        def forward(self, x):
            feats = self.features(x)
            probs = torch.softmax(self.head(feats.mean(dim=(2, 3))), dim=1)
            cam = torch.einsum("ck,nkhw->nchw", self.head.weight, feats)
            low = cam.amin(dim=(2, 3), keepdim=True)
            high = cam.amax(dim=(2, 3), keepdim=True)
            return probs, (cam - low) / (high - low + 1e-6)

    model = TinyExpressionNet().eval()
    dummy = torch.zeros(1, channels, size, size)
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, not wrong; the
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo one needs onnxscript
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["probs", "cam"],
                          dynamic_axes={"input": {0: "n"}, "probs": {0: "n"}, "cam": {0: "n"}})
    return path


def expression_entry(file: str, classes: tuple[str, ...], size: int, channels: int, sha: str) -> dict:
    color = "gray" if channels == 1 else "rgb"
    return {"task": "expression", "file": file, "sha256": sha, "licence": "test model (untrained)",
            "description": "tiny CNN exported for the app tests",
            "input": {"layout": "NCHW", "color": color, "size": size, "channels": channels,
                      "mean": [127.5] * 3, "std": [127.5] * 3},
            "outputs": ["probs", "cam"], "classes": list(classes), "sources": [{"kind": "asset"}]}


def make_store(folder: Path, store_root: Path, with_models: bool = True):
    """A ModelStore whose manifest (in `folder`) lists the real RetinaFace entry, installed under
    `store_root`, and two test expression models shipped as assets in `folder`."""
    from app.runtime.store import ModelStore

    folder.mkdir(parents=True, exist_ok=True)
    manifest = json.loads((ASSETS_DIR / "manifest.json").read_text())
    models = {"retinaface_mnet025": manifest["models"]["retinaface_mnet025"]}
    if with_models:
        specs = (("tiny_ferplus", FERPLUS_CLASSES, 48, 1, 0), ("tiny_rgb7", SEVEN_CLASSES, 64, 3, 1))
        for name, classes, size, channels, seed in specs:
            path = folder / f"{name}.onnx"
            if not path.is_file():
                export_expression_model(path, classes, size, channels, seed)
            models[name] = expression_entry(path.name, classes, size, channels, sha256(path))
    (folder / "manifest.json").write_text(json.dumps({"models": models}, indent=2))
    return ModelStore(root=store_root, manifest=folder / "manifest.json")
