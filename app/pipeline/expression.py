"""The expression stage: aligned crops in, class probabilities and class activation maps out.

Everything model-specific (input size, colour, normalisation, class names) comes from the
model's manifest entry, so switching the live model is swapping one object. All faces of a
frame go through the network as one batch. A region-based model's parts (FS-DSN's eyes and
mouth) are read from its own ONNX metadata (`regions`, see `regions.py`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnxruntime as ort

from app.errors import ModelIntegrityError
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.pipeline.regions import METADATA_KEY, parse_regions
from app.runtime.providers import Device, create_session, session_provider
from app.runtime.store import ModelStore


class ExpressionClassifier:
    def __init__(self, session: ort.InferenceSession, spec: InputSpec, classes: Sequence[str],
                 name: str = "expression") -> None:
        self.session, self.spec, self.classes, self.name = session, spec, tuple(classes), name
        self.input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        if "probs" not in outputs:
            raise ModelIntegrityError(
                f"{name}: expression models must output `probs` (and optionally `cam`); "
                f"this one outputs {outputs}")
        self.outputs = ["probs"] + (["cam"] if "cam" in outputs else [])
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

    def __call__(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, C) probabilities and (N, C, h, w) CAMs (None if the model has no CAM output)."""
        if not crops:
            return np.zeros((0, len(self.classes)), np.float32), None
        batch = prepare_batch(crops, self.spec)
        results = self.session.run(self.outputs, {self.input_name: batch})
        probs = np.asarray(results[0], dtype=np.float32)
        cam = np.asarray(results[1], dtype=np.float32) if len(results) > 1 else None
        return probs, cam
