"""The expression stage: aligned crops in, class probabilities and class activation maps out.

Everything model-specific (input size, colour, normalisation, class names) comes from the
model's manifest entry, so switching the live model is swapping one object. All faces of a
frame go through the network as one batch. A region-based model's parts (FS-DSN's eyes and
mouth) are read from its own ONNX metadata (`regions`, see `regions.py`).

Two seed networks reach past the crop. ORSANet takes priors as extra ONNX inputs (`landmarks68`,
`parsing`): they are fed from the face's 68 points (the landmark student's, else FaceMesh's)
mapped into the crop, and the parsing map is drawn from those points with the occlusion
stage's hidden pixels as background, as its training drew it from the teacher's points and
the occluder's mask (`app.pipeline.priors.prior_feeds`); without landmarks the FERPlus
template stands in, as in the export's defaults. The
mask-aware model returns its own occlusion map (extra output `occlusion`), which replaces the
occlusion stage's map on the faces it classifies, so the overlay and the region visibility
show what this model saw (part visibility stays the occlusion stage's).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.pipeline.occlusion_map import crop_landmarks
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.priors import prior_feeds
from app.pipeline.records import FaceAnalysis
from app.pipeline.regions import METADATA_KEY, face_regions, parse_regions
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore


class ExpressionClassifier:
    def __init__(self, session: ort.InferenceSession, spec: InputSpec, classes: Sequence[str],
                 name: str = "expression") -> None:
        self.session, self.spec, self.classes, self.name = session, spec, tuple(classes), name
        self.input_name = session.get_inputs()[0].name
        self.extra_inputs = prior_input_types(session)
        unknown = set(self.extra_inputs) - set(PRIOR_INPUTS)
        if unknown:
            raise ModelIntegrityError(
                f"{name}: takes inputs {sorted(unknown)} that occlufer cannot feed "
                f"(it feeds {', '.join(PRIOR_INPUTS)})")
        outputs = [o.name for o in session.get_outputs()]
        if "probs" not in outputs:
            raise ModelIntegrityError(
                f"{name}: expression models must output `probs` (and optionally `cam`); "
                f"this one outputs {outputs}")
        self.outputs = ["probs"] + (["cam"] if "cam" in outputs else [])
        #: maps the model returns beside its classes (the mask-aware model's `occlusion`)
        self.extra_outputs = [o for o in EXTRA_OUTPUTS if o in outputs]
        self.provider = session_provider(session)
        metadata = session.get_modelmeta().custom_metadata_map
        #: {name: (x0, y0, x1, y1)} fractions of the crop; {} for a whole-face model.
        self.regions = parse_regions(metadata.get(METADATA_KEY), name)

    @classmethod
    def from_store(cls, name: str, store: ModelStore | None = None, device: Device = "auto",
                   threads: int | None = None) -> "ExpressionClassifier":
        store = store or ModelStore()
        entry = store.entry(name)
        session = create_session(store.verified_path(name), device, threads)
        return cls(session, InputSpec.from_manifest(entry["input"]), entry["classes"], name)

    def __call__(self, crops: Sequence[np.ndarray], priors: dict[str, np.ndarray] | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C) probabilities and (N, C, h, w) CAMs (None if the model has no CAM output)."""
        probs, cam, _ = self.run(crops, priors)
        return probs, cam

    def run(self, crops: Sequence[np.ndarray], priors: dict[str, np.ndarray] | None = None
            ) -> tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]]:
        """Probabilities, CAMs and the extra outputs by name. `priors` feeds the extra inputs
        (`prior_inputs` builds them); any the caller leaves out get the template defaults."""
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32), None, {}
        feeds = {self.input_name: prepare_batch(crops, self.spec)}
        if self.extra_inputs:
            given = priors or {}
            defaults = self.prior_inputs([None] * len(crops)) if set(self.extra_inputs) - set(given) else {}
            feeds.update({k: np.asarray(given.get(k, defaults.get(k)), dtype=dtype)
                          for k, dtype in self.extra_inputs.items()})
        results = self.session.run(self.outputs + self.extra_outputs, feeds)
        probs = np.asarray(results[0], dtype=np.float32)
        cam = np.asarray(results[1], dtype=np.float32) if "cam" in self.outputs else None
        extras = {name: np.asarray(value, dtype=np.float32)
                  for name, value in zip(self.extra_outputs, results[len(self.outputs):])}
        return probs, cam, extras

    def prior_inputs(self, analyses: Sequence[FaceAnalysis | None]) -> dict[str, np.ndarray]:
        """The extra inputs this model takes, built from each face's earlier stages (a None
        face, or one without landmarks, gets the FERPlus template)."""
        if not self.extra_inputs:
            return {}
        landmarks, hidden = [], []
        for analysis in analyses:
            landmarks.append(None if analysis is None else crop_landmarks(analysis))
            in_crop = (analysis is not None and analysis.occlusion is not None
                       and analysis.maps_to_frame is None)
            hidden.append(analysis.occlusion if in_crop else None)
        return prior_feeds(tuple(self.extra_inputs), self.spec.size, landmarks, hidden)

    def annotate(self, analyses: Sequence[FaceAnalysis]) -> None:
        """Classify every face as one batch: fill `probs`, `classes`, `cam`, `regions` (and
        `occlusion` from a model that predicts its own)."""
        if not analyses:
            return
        probs, cam, extras = self.run([a.aligned.crop for a in analyses], self.prior_inputs(analyses))
        occlusion = extras.get("occlusion")
        for i, analysis in enumerate(analyses):
            analysis.probs, analysis.classes = probs[i], self.classes
            analysis.cam = None if cam is None else cam[i]
            if occlusion is not None and analysis.maps_to_frame is None:
                analysis.occlusion = occlusion[i].reshape(occlusion.shape[-2:])
            analysis.regions = face_regions(self.regions, analysis)


def prior_input_types(session: ort.InferenceSession) -> dict[str, type]:
    """A model's inputs beyond the image, name -> the numpy dtype onnxruntime expects.
    ORSANet exports its priors as overridable initializers that hold the template (so a
    caller may leave them out), other exports may make them plain inputs; both count."""
    optional = [i for i in session.get_overridable_initializers() if i.name in PRIOR_INPUTS]
    return {i.name: _ONNX_DTYPES.get(i.type, np.float32)
            for i in [*session.get_inputs()[1:], *optional]}


#: The extra inputs occlufer knows how to feed, and the extra outputs it knows how to show.
PRIOR_INPUTS = ("landmarks68", "parsing")
EXTRA_OUTPUTS = ("occlusion",)
_ONNX_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(uint8)": np.uint8}
