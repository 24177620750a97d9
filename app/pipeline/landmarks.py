"""468-point FaceMesh landmarks (the landmark teacher) on an onnxruntime session.

The model is Google MediaPipe's `face_landmark.tflite` converted to ONNX by
`exporters/facemesh.py` (manifest name ``facemesh_468``). It was trained on the region of
interest MediaPipe builds from a face detection, so that is what it is fed here, not the
tighter FERPlus-framed crop of `alignment.py`:

- a square centred on the detector's box, side = ``ROI_SCALE`` (1.5) x the box's longer side
  (a 25 % margin on every side), rotated so that the eye line is horizontal (MediaPipe's
  ``face_detection_to_roi``: ``SizeMode.SQUARE_LONG``, scale 1.5, rotation from the eyes);
- warped to 192 x 192 with replicated borders, RGB, float32 in [0, 1], NCHW (the converted
  graph takes NCHW; the tflite takes NHWC).

The network returns 468 (x, y, z) in input pixels (x, y measured from the input's outer edge,
z a relative depth on the x scale) and one face-presence logit. Points are mapped back to
frame pixels through the inverse of the ROI warp; presence is the logit's sigmoid.

The per-point visibility the issue asks for is not produced here: FaceMesh has no such
output, so it stays for the occlusion stage to derive.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.pipeline.detector import as_bgr
from app.pipeline.landmarks68 import facemesh_to_ibug68
from app.pipeline.records import Face, FaceAnalysis
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

MODEL_NAME = "facemesh_468"
INPUT_SIZE = 192
#: MediaPipe's scaling of the detection box into the landmark ROI (face_landmark ROI_SCALE).
ROI_SCALE = 1.5
NUM_POINTS = 468


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def roi_matrix(face: Face, scale: float = ROI_SCALE, size: int = INPUT_SIZE,
               rotate: bool = True) -> np.ndarray:
    """The 2x3 float64 affine frame -> FaceMesh input for one face (OpenCV pixel centres).

    Centre: the box centre; side: `scale` x the box's longer side; rotation: the angle of
    the line from the image-left eye to the image-right eye (`Face.landmarks5[0] -> [1]`),
    so the face sits upright in the input as FaceMesh was trained.
    """
    x1, y1, x2, y2 = (float(v) for v in face.box)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    side = scale * max(x2 - x1, y2 - y1)
    if not side > 1.0:
        raise ValueError(f"face box too small for landmarks: {face.box}")
    angle = 0.0
    if rotate:
        (ex0, ey0), (ex1, ey1) = np.asarray(face.landmarks5, dtype=np.float64)[:2]
        angle = math.atan2(ey1 - ey0, ex1 - ex0)
    k = size / side
    cos, sin = math.cos(angle) * k, math.sin(angle) * k
    # rotate by -angle about the centre, scale, then put the centre at the input's centre
    # (size / 2 in edge coordinates = size / 2 - 0.5 in pixel-centre coordinates)
    centre = size / 2.0 - 0.5
    return np.array([[cos, sin, centre - cos * cx - sin * cy],
                     [-sin, cos, centre + sin * cx - cos * cy]], dtype=np.float64)


def facemesh_input(bgr: np.ndarray, matrix: np.ndarray, size: int = INPUT_SIZE) -> np.ndarray:
    """(3, size, size) float32 RGB in [0, 1]: the ROI `matrix` cut out of a BGR image."""
    crop = cv2.warpAffine(bgr, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) * np.float32(1.0 / 255.0)


@dataclass
class FaceMeshResult:
    """Landmarks of one face, in frame coordinates."""

    landmarks468: np.ndarray  # (468, 2) float32 frame pixels
    depth468: np.ndarray  # (468,) float32 relative depth, frame-pixel scale, smaller = nearer
    landmarks68: np.ndarray  # (68, 2) float32 frame pixels, iBUG 300-W order
    presence: float  # P(a face fills the ROI), the network's face flag after a sigmoid
    roi: np.ndarray  # (2, 3) float32 frame -> network input (192 x 192)


class FaceMeshLandmarker:
    """FaceMesh on an onnxruntime session; all faces of a frame run as one batch.

    Outputs are told apart by size (1404 = 468 x 3 values vs 1 presence logit), so an export
    that names them differently still works; a file with a fixed batch of 1 (a third-party
    conversion) is run once per face.
    """

    name = "landmarks"

    def __init__(self, session: ort.InferenceSession, roi_scale: float = ROI_SCALE,
                 model_name: str = MODEL_NAME) -> None:
        self.session = session
        self.roi_scale = roi_scale
        self.model_name = model_name
        inputs = session.get_inputs()
        if len(inputs) != 1:
            raise ModelIntegrityError(f"{model_name}: expected one input, found {len(inputs)}")
        self.input_name = inputs[0].name
        shape = list(inputs[0].shape)
        if len(shape) != 4:
            raise ModelIntegrityError(f"{model_name}: input shape {shape} is not 4-D")
        self.channels_last = shape[3] == 3 and shape[1] != 3
        spatial = shape[1:3] if self.channels_last else shape[2:4]
        self.size = int(spatial[0]) if isinstance(spatial[0], int) else INPUT_SIZE
        self.fixed_batch = isinstance(shape[0], int) and shape[0] == 1
        self.points_output = self.presence_output = None
        for out in session.get_outputs():
            elements = math.prod(d for d in out.shape[1:] if isinstance(d, int))
            if elements == NUM_POINTS * 3:
                self.points_output = out.name
            elif elements == 1:
                self.presence_output = out.name
        if self.points_output is None or self.presence_output is None:
            raise ModelIntegrityError(
                f"{model_name}: outputs {[(o.name, o.shape) for o in session.get_outputs()]} "
                "are not FaceMesh's (1404 landmark values and 1 face flag)")

    @classmethod
    def from_store(cls, name: str = MODEL_NAME, store: ModelStore | None = None,
                   device: Device = "auto", threads: int | None = None) -> "FaceMeshLandmarker":
        store = store or ModelStore()
        session = create_session(store.verified_path(name), device, threads)
        return cls(session, model_name=name)

    @property
    def provider(self) -> str:
        return session_provider(self.session)

    def run_inputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw network on (N, 3, S, S) inputs: (N, 468, 3) input-pixel points, (N,) logits."""
        if self.channels_last:
            batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
        names = [self.points_output, self.presence_output]
        if self.fixed_batch and len(batch) > 1:
            parts = [self.session.run(names, {self.input_name: batch[i:i + 1]}) for i in range(len(batch))]
            points = np.concatenate([p[0] for p in parts])
            logits = np.concatenate([p[1] for p in parts])
        else:
            points, logits = self.session.run(names, {self.input_name: batch})
        return (np.asarray(points, np.float32).reshape(len(batch), NUM_POINTS, 3),
                np.asarray(logits, np.float32).reshape(len(batch)))

    def __call__(self, image: np.ndarray, faces: Sequence[Face]) -> list[FaceMeshResult]:
        """Landmarks for every face of `image` (gray, BGR or BGRA uint8), in frame pixels."""
        if not faces:
            return []
        bgr = as_bgr(image)  # raises BadFrameError on anything that is not an 8-bit image
        matrices = [roi_matrix(f, self.roi_scale, self.size) for f in faces]
        batch = np.stack([facemesh_input(bgr, m, self.size) for m in matrices])
        points, logits = self.run_inputs(batch)
        presence = sigmoid(logits)
        results = []
        for m, pts, p in zip(matrices, points, presence):
            inverse = cv2.invertAffineTransform(m)
            # network x, y are measured from the input's outer edge: pixel centre = value - 0.5
            xy = (pts[:, :2].astype(np.float64) - 0.5) @ inverse[:, :2].T + inverse[:, 2]
            scale = math.sqrt(abs(np.linalg.det(inverse[:, :2])))
            xy = xy.astype(np.float32)
            results.append(FaceMeshResult(
                landmarks468=xy,
                depth468=(pts[:, 2] * scale).astype(np.float32),
                landmarks68=facemesh_to_ibug68(xy),
                presence=float(p),
                roi=m.astype(np.float32),
            ))
        return results

    def annotate(self, image: np.ndarray, analyses: Sequence[FaceAnalysis]) -> None:
        """Fill `landmarks468`, `landmarks68` and `landmarks_presence` of each analysis."""
        fill(analyses, self(image, [a.face for a in analyses]))


def fill(analyses: Sequence[FaceAnalysis], results: Sequence[FaceMeshResult]) -> None:
    """Copy FaceMesh results onto their analyses (also for results the pipeline's face
    following computed before the faces were aligned)."""
    for analysis, result in zip(analyses, results):
        analysis.landmarks468 = result.landmarks468
        analysis.landmarks68 = result.landmarks68
        analysis.landmarks_presence = result.presence


__all__ = ["FaceMeshLandmarker", "FaceMeshResult", "roi_matrix", "facemesh_input",
           "INPUT_SIZE", "ROI_SCALE", "MODEL_NAME"]
