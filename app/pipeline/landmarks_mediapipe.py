"""Optional landmark backend: MediaPipe Tasks FaceLandmarker, on a `.task` file the user owns.

mediapipe 1.x ships no models and no `mediapipe.solutions`: its FaceLandmarker needs a
`face_landmarker.task` bundle (face detector + FaceMesh-with-iris + blendshapes) that the user
downloads from Google and points occlufer at. occlufer never requires mediapipe and has no
extra for it: mediapipe 1.2.2 depends on opencv-contrib-python, which overwrites the
opencv-python that occlufer depends on (both install `cv2/`). Install it yourself, knowing that.

The default landmark stage is `app.pipeline.landmarks.FaceMeshLandmarker` (the same FaceMesh
network, converted to ONNX, run by onnxruntime on occlufer's own detections). This backend
runs MediaPipe's own detector as well, so its faces are matched to occlufer's by box overlap.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app.errors import ModelMissingError, OccluferError
from app.pipeline.detector import as_bgr
from app.pipeline.landmarks68 import facemesh_to_ibug68
from app.pipeline.records import FaceAnalysis

INSTALL_HINT = (
    "pip install 'mediapipe>=1.0'  (it pulls opencv-contrib-python, which replaces "
    "opencv-python's cv2; occlufer works without mediapipe: the default landmark stage is the "
    "ONNX FaceMesh, `occlufer models fetch facemesh_468`)"
)


class MediapipeUnavailableError(OccluferError):
    """mediapipe is not installed, too old, or the `.task` file cannot be used."""


def _import_mediapipe():
    try:
        mp = importlib.import_module("mediapipe")
        vision = importlib.import_module("mediapipe.tasks.python.vision")
        tasks = importlib.import_module("mediapipe.tasks.python")
    except ImportError as exc:
        raise MediapipeUnavailableError(
            f"The mediapipe landmark backend needs the mediapipe package, which is not "
            f"installed ({exc}). {INSTALL_HINT}") from exc
    if not hasattr(vision, "FaceLandmarker"):
        raise MediapipeUnavailableError(
            f"mediapipe {getattr(mp, '__version__', '?')} has no Tasks FaceLandmarker; "
            f"install mediapipe>=1.0. {INSTALL_HINT}")
    return mp, tasks, vision


@dataclass
class MediapipeFaceLandmarks:
    """One face found by MediaPipe, in frame pixels."""

    landmarks468: np.ndarray  # (468, 2) float32 (the iris points 468-477 are in `iris`)
    depth468: np.ndarray  # (468,) float32, frame-pixel scale
    landmarks68: np.ndarray  # (68, 2) float32, iBUG 300-W order
    iris: np.ndarray | None  # (10, 2) float32 when the bundle has the iris model

    @property
    def box(self) -> np.ndarray:
        return np.concatenate([self.landmarks468.min(0), self.landmarks468.max(0)]).astype(np.float32)


class MediapipeLandmarker:
    """MediaPipe Tasks FaceLandmarker in image mode on a user-provided `.task` bundle."""

    name = "landmarks"

    def __init__(self, task_path: str | Path, max_faces: int = 4,
                 min_presence: float = 0.5) -> None:
        task_path = Path(task_path).expanduser()
        if not task_path.is_file():
            raise ModelMissingError(
                f"MediaPipe task file not found: {task_path}. Download face_landmarker.task "
                "from Google's MediaPipe model page and pass its path; raw .tflite files are "
                "rejected by mediapipe 1.x (they lack the bundle metadata).")
        if task_path.suffix != ".task":
            raise MediapipeUnavailableError(
                f"{task_path} is not a .task bundle; MediaPipe Tasks FaceLandmarker only "
                "loads face_landmarker.task files.")
        self.mp, tasks, vision = _import_mediapipe()
        options = vision.FaceLandmarkerOptions(
            base_options=tasks.BaseOptions(model_asset_path=str(task_path)),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=max_faces,
            min_face_presence_confidence=min_presence,
        )
        try:
            self.landmarker = vision.FaceLandmarker.create_from_options(options)
        except Exception as exc:  # mediapipe raises RuntimeError / ValueError with C++ status text
            raise MediapipeUnavailableError(
                f"mediapipe could not load {task_path}: {str(exc).splitlines()[0][:300]}") from exc
        self.task_path = task_path

    def close(self) -> None:
        self.landmarker.close()

    def __call__(self, image: np.ndarray) -> list[MediapipeFaceLandmarks]:
        """Every face MediaPipe finds in `image` (gray, BGR or BGRA uint8)."""
        rgb = cv2.cvtColor(as_bgr(image), cv2.COLOR_BGR2RGB)
        height, width = rgb.shape[:2]
        result = self.landmarker.detect(self.mp.Image(image_format=self.mp.ImageFormat.SRGB, data=rgb))
        faces = []
        for landmarks in result.face_landmarks:
            xyz = np.array([(p.x, p.y, p.z) for p in landmarks], dtype=np.float64)
            # normalised coordinates measure from the image's outer edge: pixel centre = v * size - 0.5
            xy = (xyz[:, :2] * (width, height) - 0.5).astype(np.float32)
            faces.append(MediapipeFaceLandmarks(
                landmarks468=xy[:468],
                depth468=(xyz[:468, 2] * width).astype(np.float32),
                landmarks68=facemesh_to_ibug68(xy[:468]),
                iris=xy[468:478] if len(xy) >= 478 else None,
            ))
        return faces

    def annotate(self, image: np.ndarray, analyses: Sequence[FaceAnalysis],
                 min_iou: float = 0.3) -> None:
        """Give each analysis the MediaPipe face whose landmark box overlaps its detector box
        most (IoU >= `min_iou`); analyses without a match keep None."""
        found = self(image)
        taken: set[int] = set()
        for analysis in analyses:
            best, best_iou = None, min_iou
            for i, face in enumerate(found):
                overlap = _iou(analysis.face.box, face.box)
                if i not in taken and overlap >= best_iou:
                    best, best_iou = i, overlap
            if best is not None:
                taken.add(best)
                analysis.landmarks468 = found[best].landmarks468
                analysis.landmarks68 = found[best].landmarks68


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


__all__ = ["MediapipeLandmarker", "MediapipeFaceLandmarks", "MediapipeUnavailableError"]
