"""The occlusion-map and face-parsing stage: where a face is hidden, and what is where.

Runs after alignment on the same aligned crop the expression model gets (FERPlus framing; the
crop is resized to the network's 64 px, which keeps the framing exactly because the template
is defined in fractions of the side). One ONNX pass gives two maps:

- `occlusion` (N, 1, S, S): P(pixel hidden by something that is not the face);
- `parsing`   (N, C, S, S): class probabilities over `classes` (background, skin, brows,
  eyes, nose, lips, inner mouth, hair_or_other, occluder); the stage keeps the argmax.

From the map and the face's geometry it derives a per-part visibility summary (`PARTS`: left
eye, right eye, brows, nose, mouth, jaw; left/right are the subject's, as in iBUG): the share
of each part's area whose occlusion probability is at most 0.5. The parts are placed from the
68 landmarks when the landmark stage ran (mapped into the crop), else from the alignment
template, on which alignment puts the detector's five points.

Maps stay in crop coordinates on `FaceAnalysis` (overlays warp them with `aligned.inverse`);
`map_to_frame` does that warp for any other consumer.

`BiSeNetParser` plugs a third-party CelebAMask-HQ BiSeNet (19 classes) in as the parsing
model instead, remapped to the same classes (see its docstring).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.pipeline.alignment import FERPLUS_LANDMARKS5, similarity_transform, template_points
from app.pipeline.detector import as_bgr
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.records import AlignedFace, FaceAnalysis
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore

MODEL_NAME = "perception_unet64"
#: Our parsing classes (index = label); must match models/perception.PARSING_CLASSES.
PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "left_brow", "right_brow", "left_eye", "right_eye", "nose",
    "upper_lip", "inner_mouth", "lower_lip", "hair_or_other", "occluder",
)
PARTS: tuple[str, ...] = ("left_eye", "right_eye", "brows", "nose", "mouth", "jaw")
#: A pixel is occluded above this probability (as FaceAnalysis.occlusion_ratio).
OCCLUDED_ABOVE = 0.5
OUTPUTS = ("occlusion", "parsing")


# ------------------------------------------------------------------ geometry
def _box_mask(size: int, box: np.ndarray) -> np.ndarray:
    """Pixels whose centres lie in box (x0, y0, x1, y1), given in pixel-edge coordinates."""
    centres = np.arange(size) + 0.5
    cols = (centres >= box[0]) & (centres <= box[2])
    rows = (centres >= box[1]) & (centres <= box[3])
    return rows[:, None] & cols[None, :]


def _padded(points: np.ndarray, pad_x: float, pad_y: float) -> np.ndarray:
    lo, hi = points.min(axis=0), points.max(axis=0)
    return np.array([lo[0] - pad_x, lo[1] - pad_y, hi[0] + pad_x, hi[1] + pad_y])


def part_boxes(landmarks68: np.ndarray | None = None,
               template: np.ndarray = FERPLUS_LANDMARKS5) -> dict[str, np.ndarray]:
    """Each part's box (x0, y0, x1, y1) in fractions of the crop side (edge coordinates).

    With `landmarks68` (fractions of the crop side, iBUG order) the boxes hug the points with a
    margin in eye distances d; without them they are laid out around the five template points
    in face proportions (d, eye line, nose tip, mouth line). The jaw is the lower face band
    below the nose; `part_masks` takes the mouth out of it.
    """
    if landmarks68 is not None:
        p = np.asarray(landmarks68, np.float64).reshape(68, 2)
        d = float(np.linalg.norm(p[36:42].mean(0) - p[42:48].mean(0))) or 0.35
        boxes = {
            "right_eye": _padded(p[36:42], 0.15 * d, 0.14 * d),
            "left_eye": _padded(p[42:48], 0.15 * d, 0.14 * d),
            "brows": _padded(p[17:27], 0.06 * d, 0.08 * d),
            "nose": _padded(p[27:36], 0.08 * d, 0.04 * d),
            "mouth": _padded(p[48:60], 0.08 * d, 0.08 * d),
        }
        jaw = p[2:15]
        boxes["jaw"] = np.array([jaw[:, 0].min(), p[33, 1] + 0.05 * d, jaw[:, 0].max(),
                                 p[8, 1]])
    else:
        t = np.asarray(template, np.float64)
        eye_r, eye_l, nose, mouth_a, mouth_b = t  # image-left eye is the subject's right
        d = float(np.linalg.norm(eye_l - eye_r))
        eye_y, mouth_y = (eye_r[1] + eye_l[1]) / 2, (mouth_a[1] + mouth_b[1]) / 2
        half = np.array([0.30 * d, 0.17 * d])
        boxes = {
            "right_eye": np.r_[eye_r - half, eye_r + half],
            "left_eye": np.r_[eye_l - half, eye_l + half],
            "brows": np.array([eye_r[0] - 0.38 * d, eye_y - 0.55 * d, eye_l[0] + 0.38 * d,
                               eye_y - 0.18 * d]),
            "nose": np.array([nose[0] - 0.25 * d, eye_y + 0.12 * d, nose[0] + 0.25 * d,
                              nose[1] + 0.12 * d]),
            "mouth": np.array([mouth_a[0] - 0.15 * d, mouth_y - 0.22 * d, mouth_b[0] + 0.15 * d,
                               mouth_y + 0.25 * d]),
            "jaw": np.array([eye_r[0] - 0.35 * d, nose[1] + 0.10 * d, eye_l[0] + 0.35 * d,
                             mouth_y + 0.60 * d]),
        }
    return {name: np.clip(boxes[name], 0.0, 1.0) for name in PARTS}


def part_masks(size: int, landmarks68: np.ndarray | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(name -> (size, size) bool mask, name -> box in map pixels) for every part."""
    if landmarks68 is None:
        return _template_part_masks(size)
    return _part_masks(size, landmarks68)


@functools.lru_cache(maxsize=8)
def _template_part_masks(size: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    masks, boxes = _part_masks(size, None)
    for array in (*masks.values(), *boxes.values()):
        array.setflags(write=False)  # shared between calls
    return masks, boxes


def _part_masks(size: int, landmarks68: np.ndarray | None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    boxes = {k: v * size for k, v in part_boxes(landmarks68).items()}
    masks = {k: _box_mask(size, v) for k, v in boxes.items()}
    masks["jaw"] = masks["jaw"] & ~masks["mouth"]
    return masks, boxes


def visibility(occlusion: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Share of each part's pixels with P(occluded) <= 0.5 (1.0 for a part off the map)."""
    visible = np.asarray(occlusion) <= OCCLUDED_ABOVE
    return {name: float(visible[m].mean()) if m.any() else 1.0 for name, m in masks.items()}


def crop_landmarks(analysis: FaceAnalysis) -> np.ndarray | None:
    """The face's 68 points as fractions of its aligned crop, or None without them."""
    if analysis.landmarks68 is None or analysis.aligned is None:
        return None
    m = analysis.aligned.matrix.astype(np.float64)
    pts = np.asarray(analysis.landmarks68, np.float64) @ m[:, :2].T + m[:, 2]
    return (pts + 0.5) / analysis.aligned.crop.shape[0]


def map_matrix(aligned: AlignedFace, map_size: int) -> np.ndarray:
    """2x3 affine from the pixels of a (map_size, map_size) map over `aligned.crop` to frame
    pixels (pixel-centre convention on both sides)."""
    k = aligned.crop.shape[0] / map_size
    to_crop = np.array([[k, 0, 0.5 * k - 0.5], [0, k, 0.5 * k - 0.5], [0, 0, 1]], np.float64)
    inverse = np.vstack([aligned.inverse.astype(np.float64), [0, 0, 1]])
    return (inverse @ to_crop)[:2]


def map_to_frame(crop_map: np.ndarray, aligned: AlignedFace, frame_shape: Sequence[int],
                 nearest: bool = False, matrix: np.ndarray | None = None) -> np.ndarray:
    """A square map over the aligned crop (any resolution) warped into a frame-sized array
    (zeros outside the crop). `matrix` overrides the map -> frame affine (maps with their own
    crop, `FaceAnalysis.maps_to_frame`); nearest-neighbour for label maps."""
    m = map_matrix(aligned, crop_map.shape[0]) if matrix is None else np.asarray(matrix, np.float64)
    flags = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.warpAffine(np.ascontiguousarray(crop_map), m, (int(frame_shape[1]), int(frame_shape[0])),
                          flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


# ------------------------------------------------------------------ results
@dataclass
class PerceptionResult:
    """The stage's output for one face, in map pixels over the aligned crop."""

    occlusion: np.ndarray | None  # (S, S) float32 P(occluded); None for parsing-only models
    parsing: np.ndarray  # (S, S) uint8 labels over `classes`
    classes: tuple[str, ...]
    visibility: dict[str, float] = field(default_factory=dict)  # part -> share visible
    boxes: dict[str, np.ndarray] = field(default_factory=dict)  # part -> box in map pixels

    @property
    def occlusion_ratio(self) -> float | None:
        return None if self.occlusion is None else float(np.mean(self.occlusion > OCCLUDED_ABOVE))


def _fill(analysis: FaceAnalysis, result: PerceptionResult) -> None:
    analysis.occlusion = result.occlusion
    analysis.parsing = result.parsing
    analysis.parsing_classes = result.classes
    if result.visibility:
        analysis.part_visibility = dict(result.visibility)


class OcclusionParsingModel:
    """occlufer's occlusion + parsing U-Net (`models/perception.py`) on an onnxruntime session.

    Everything model-specific (input size, colour, normalisation, class names) comes from the
    manifest entry, as for the expression models.
    """

    name = "occlusion"

    def __init__(self, session: ort.InferenceSession, spec: InputSpec,
                 classes: Sequence[str] = PARSING_CLASSES, model_name: str = MODEL_NAME) -> None:
        self.session, self.spec, self.classes = session, spec, tuple(classes)
        self.model_name = model_name
        self.input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        if not all(o in outputs for o in OUTPUTS):
            raise ModelIntegrityError(f"{model_name}: expected outputs {OUTPUTS}, found {outputs}")
        if "occluder" not in self.classes:
            raise ModelIntegrityError(f"{model_name}: parsing classes lack `occluder`: {self.classes}")

    @classmethod
    def from_store(cls, name: str = MODEL_NAME, store: ModelStore | None = None,
                   device: Device = "auto", threads: int | None = None) -> "OcclusionParsingModel":
        store = store or ModelStore()
        entry = store.entry(name)
        session = create_session(store.verified_path(name), device, threads)
        return cls(session, InputSpec.from_manifest(entry["input"]), entry["classes"], name)

    @classmethod
    def from_file(cls, path, device: Device = "auto", threads: int | None = None) -> "OcclusionParsingModel":
        """Load an exported file directly: input spec and classes from its own metadata
        (written by training/perception/export.py), for files outside the manifest."""
        import json

        session = create_session(path, device, threads)
        meta = dict(session.get_modelmeta().custom_metadata_map)
        try:
            spec, classes = InputSpec.from_manifest(json.loads(meta["input"])), json.loads(meta["classes"])
        except (KeyError, ValueError) as exc:
            raise ModelIntegrityError(f"{path}: no occlufer metadata (input, classes): {exc}") from None
        return cls(session, spec, classes, meta.get("entry_name", MODEL_NAME))

    @property
    def provider(self) -> str:
        return session_provider(self.session)

    def predict(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(N, S, S) occlusion probabilities and (N, C, S, S) parsing probabilities for
        aligned crops (gray, BGR or BGRA uint8, any size, FERPlus framing)."""
        if not len(crops):
            s = self.spec.size
            return np.zeros((0, s, s), np.float32), np.zeros((0, len(self.classes), s, s), np.float32)
        batch = prepare_batch(crops, self.spec)
        occlusion, parsing = self.session.run(list(OUTPUTS), {self.input_name: batch})
        return np.asarray(occlusion, np.float32)[:, 0], np.asarray(parsing, np.float32)

    def __call__(self, crops: Sequence[np.ndarray],
                 landmarks68: Sequence[np.ndarray | None] | None = None) -> list[PerceptionResult]:
        """Maps and part visibility per crop; `landmarks68` (fractions of each crop's side)
        place the parts when given."""
        occlusion, parsing = self.predict(crops)
        results = []
        for i in range(len(occlusion)):
            lm = None if landmarks68 is None else landmarks68[i]
            masks, boxes = part_masks(self.spec.size, lm)
            results.append(PerceptionResult(
                occlusion=occlusion[i], parsing=parsing[i].argmax(0).astype(np.uint8),
                classes=self.classes, visibility=visibility(occlusion[i], masks), boxes=boxes))
        return results

    def annotate(self, image: np.ndarray, analyses: Sequence[FaceAnalysis]) -> None:
        """Fill `occlusion`, `parsing`, `parsing_classes` and `part_visibility` of each face."""
        todo = [a for a in analyses if a.aligned is not None]
        results = self([a.aligned.crop for a in todo], [crop_landmarks(a) for a in todo])
        for analysis, result in zip(todo, results):
            _fill(analysis, result)


# ------------------------------------------------------------------ BiSeNet (CelebAMask-HQ)
#: CelebAMask-HQ's 19 labels in the order of the widely used BiSeNet face-parsing release
#: (zllrunning/face-parsing.PyTorch, `79999_iter.pth`): 0 = background.
CELEBAMASK_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
#: CelebAMask-HQ label -> ours. Brows and eyes are first mapped without side (their side is
#: decided by position, see BiSeNetParser); eyeglasses cover the eyes, so they are the
#: occluder; ears, earrings, neck, necklace, clothes, hair and hats are `hair_or_other`.
CELEBAMASK_TO_OURS: dict[str, str] = {
    "background": "background", "skin": "skin", "l_brow": "right_brow", "r_brow": "right_brow",
    "l_eye": "right_eye", "r_eye": "right_eye", "eye_g": "occluder", "l_ear": "hair_or_other",
    "r_ear": "hair_or_other", "ear_r": "hair_or_other", "nose": "nose", "mouth": "inner_mouth",
    "u_lip": "upper_lip", "l_lip": "lower_lip", "neck": "hair_or_other",
    "neck_l": "hair_or_other", "cloth": "hair_or_other", "hair": "hair_or_other",
    "hat": "hair_or_other",
}
BISENET_SIZE = 512
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: CelebAMask-HQ frames the whole head with hair and shoulders: its eye distance is about a
#: fifth of the image side, FERPlus's about 0.355 of it. The BiSeNet crop is the FERPlus
#: template shrunk about the template's centre by this factor (assumed from CelebA-HQ's
#: alignment, which puts the eyes ~0.2 of the side apart).
BISENET_FRAMING = 0.56


def remap_table(source: Sequence[str] = CELEBAMASK_CLASSES,
                target: Sequence[str] = PARSING_CLASSES) -> np.ndarray:
    """(len(source),) uint8 lookup: source label -> our label (sides not yet decided)."""
    return np.array([target.index(CELEBAMASK_TO_OURS[name]) for name in source], np.uint8)


def assign_sides(labels: np.ndarray, midline_x: float) -> np.ndarray:
    """Split side-less brow/eye labels (all written as `right_*` by the remap) into the
    subject's right (image left of `midline_x`) and left (image right of it).

    Done by position rather than by trusting CelebAMask-HQ's l_/r_ names, whose side
    convention is not documented, so either convention (and a mirrored release) parses right.
    """
    out = labels.copy()
    cols = np.arange(labels.shape[1])[None, :]
    on_image_right = np.broadcast_to(cols > midline_x, labels.shape)
    for side_less, left in (("right_brow", "left_brow"), ("right_eye", "left_eye")):
        value, left_value = PARSING_CLASSES.index(side_less), PARSING_CLASSES.index(left)
        out[(labels == value) & on_image_right] = left_value
    return out


def bisenet_template(framing: float = BISENET_FRAMING) -> np.ndarray:
    """The FERPlus template shrunk about its centre: where faces sit in a BiSeNet input."""
    t = np.asarray(FERPLUS_LANDMARKS5, np.float64)
    centre = np.array([0.5, t[:, 1].mean()])
    return (t - centre) * framing + np.array([0.5, 0.5])


class BiSeNetParser:
    """A CelebAMask-HQ BiSeNet ONNX as the parsing model (no occlusion head of its own).

    Expected file: the 19-class BiSeNet of zllrunning/face-parsing.PyTorch (ResNet-18
    context path) exported to ONNX, input (N or 1, 3, 512, 512) RGB scaled to [0, 1] and
    normalised with the ImageNet mean/std, first output (or the only one with 19 channels)
    the class logits (N, 19, H, W) at any H = W. Register it in the manifest with
    `"task": "parsing"` and `"classes"` = CELEBAMASK_CLASSES (the default). Faces are warped
    with a looser template (`bisenet_template`) because CelebAMask-HQ frames whole heads; the
    labels are remapped with `CELEBAMASK_TO_OURS` + `assign_sides` and put on
    `FaceAnalysis.parsing` resampled onto the face's aligned crop.
    """

    name = "parsing"

    def __init__(self, session: ort.InferenceSession, classes: Sequence[str] = CELEBAMASK_CLASSES,
                 model_name: str = "bisenet_celebamask19", framing: float = BISENET_FRAMING) -> None:
        self.session, self.model_name = session, model_name
        self.source_classes = tuple(classes)
        unknown = [c for c in self.source_classes if c not in CELEBAMASK_TO_OURS]
        if unknown:
            raise ModelIntegrityError(f"{model_name}: no mapping for classes {unknown}")
        self.table = remap_table(self.source_classes)
        inputs = session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ModelIntegrityError(f"{model_name}: expected one NCHW image input")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        self.size = int(shape[2]) if isinstance(shape[2], int) else BISENET_SIZE
        self.fixed_batch = isinstance(shape[0], int) and shape[0] == 1
        n = len(self.source_classes)
        candidates = [o for o in session.get_outputs() if len(o.shape) == 4 and o.shape[1] == n]
        if not candidates:
            raise ModelIntegrityError(
                f"{model_name}: no output with {n} class channels among "
                f"{[(o.name, o.shape) for o in session.get_outputs()]}")
        self.output_name = candidates[0].name
        self.template = bisenet_template(framing)

    @classmethod
    def from_store(cls, name: str, store: ModelStore | None = None, device: Device = "auto",
                   threads: int | None = None) -> "BiSeNetParser":
        store = store or ModelStore()
        entry = store.entry(name)
        session = create_session(store.verified_path(name), device, threads)
        return cls(session, entry.get("classes", CELEBAMASK_CLASSES), name)

    @property
    def provider(self) -> str:
        return session_provider(self.session)

    def prepare(self, rgb_crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, 3, S, S) float32 input from RGB uint8 crops of side S."""
        x = np.stack(rgb_crops).astype(np.float32) / 255.0
        x = (x - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def labels(self, rgb_crops: Sequence[np.ndarray]) -> np.ndarray:
        """(N, S, S) uint8 labels in our classes for RGB crops in BiSeNet framing."""
        x = self.prepare(rgb_crops)
        if self.fixed_batch:
            logits = np.concatenate([self.session.run([self.output_name], {self.input_name: x[i:i + 1]})[0]
                                     for i in range(len(x))])
        else:
            (logits,) = self.session.run([self.output_name], {self.input_name: x})
        source = np.asarray(logits).argmax(1)
        if source.shape[1] != self.size:  # a head at reduced resolution
            source = np.stack([cv2.resize(s.astype(np.uint8), (self.size, self.size),
                                          interpolation=cv2.INTER_NEAREST) for s in source])
        ours = self.table[source]
        midline = (self.template[:, 0].mean()) * self.size - 0.5
        return np.stack([assign_sides(o, midline) for o in ours])

    def crop_matrix(self, analysis: FaceAnalysis) -> np.ndarray:
        """2x3 frame -> BiSeNet input for one face (its detector points on `template`)."""
        return similarity_transform(analysis.face.landmarks5, template_points(self.size, self.template))

    def annotate(self, image: np.ndarray, analyses: Sequence[FaceAnalysis]) -> None:
        """Fill `parsing` and `parsing_classes`, resampled onto each face's aligned crop (so
        they share the crop with the occlusion map and the overlays place them as usual)."""
        todo = [a for a in analyses if a.aligned is not None]
        if not todo:
            return
        bgr = as_bgr(image)
        matrices = [self.crop_matrix(a) for a in todo]
        crops = [cv2.cvtColor(cv2.warpAffine(bgr, m, (self.size, self.size), flags=cv2.INTER_LINEAR,
                                             borderMode=cv2.BORDER_REPLICATE), cv2.COLOR_BGR2RGB)
                 for m in matrices]
        for analysis, m, labels in zip(todo, matrices, self.labels(crops)):
            analysis.parsing = self.to_aligned(labels, m, analysis.aligned)
            analysis.parsing_classes = PARSING_CLASSES

    @staticmethod
    def to_aligned(labels: np.ndarray, matrix: np.ndarray, aligned: AlignedFace) -> np.ndarray:
        """BiSeNet-crop labels (frame -> crop `matrix`) resampled onto `aligned.crop`'s pixels."""
        inverse = np.vstack([aligned.inverse.astype(np.float64), [0, 0, 1]])
        crop_to_bisenet = np.asarray(matrix, np.float64) @ inverse  # aligned px -> BiSeNet px
        size = aligned.crop.shape[0]
        return cv2.warpAffine(labels, crop_to_bisenet, (size, size),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0)

__all__ = ["MODEL_NAME", "PARSING_CLASSES", "PARTS", "OcclusionParsingModel", "PerceptionResult",
           "BiSeNetParser", "CELEBAMASK_CLASSES", "CELEBAMASK_TO_OURS", "remap_table",
           "assign_sides", "part_boxes", "part_masks", "visibility", "map_to_frame", "map_matrix",
           "crop_landmarks"]
