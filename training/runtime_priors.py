"""The priors a prior-guided model (ORSANet) gets at run time, drawn while it trains.

Why: ORSANet trained on perfect priors (the FaceMesh teacher's points on the *clean* face and
the occluder's true mask) loses 2.5 points when the app feeds it what it really has: the
landmark student's points on the occluded face and the occlusion network's map (issue 14).
Training on exactly those feeds closes that gap by construction, instead of modelling the
student's error with noise: the same two ONNX networks the app runs score every augmented
training face (occluded, warped, degraded, as the camera would give it), and the feeds are
built by `app.pipeline.priors.prior_feeds`, the one function the app and `occlufer eval`
use. Cost, measured on a 2-core AMD EPYC: about 25 ms (student) + 107 ms (occlusion network)
per batch of 64 48-px faces.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

#: Where a prior-guided recipe's training priors come from (`Recipe.train_priors`):
#: "teacher" = FaceMesh teacher on the clean face + the occluder's true mask (perfect priors);
#: "runtime" = the landmark student + the occlusion network on the augmented face (the app's).
TRAIN_PRIOR_SOURCES = ("teacher", "runtime")


class RuntimePriors:
    """Callable `(crops, names, size) -> {name: (B, ...) array}` giving the app's prior feeds.

    The two perception sessions open on first use, so the object pickles into a DataLoader
    worker without its sessions (each process opens its own)."""

    def __init__(self, device: str = "cpu", threads: int | None = 1) -> None:
        # one thread: the training process's torch threads own the cores; measured on 2 cores
        self.device, self.threads = device, threads
        self._models: tuple[Any, Any] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"device": self.device, "threads": self.threads, "_models": None}

    def models(self) -> tuple[Any, Any]:
        if self._models is None:
            from app.pipeline.landmarks_student import StudentLandmarker
            from app.pipeline.occlusion_map import OcclusionParsingModel

            self._models = (
                StudentLandmarker.from_store(device=self.device, threads=self.threads),  # type: ignore[arg-type]
                OcclusionParsingModel.from_store(device=self.device, threads=self.threads))  # type: ignore[arg-type]
        return self._models

    def __call__(self, crops: Sequence[np.ndarray], names: Sequence[str],
                 size: int) -> dict[str, np.ndarray]:
        from app.pipeline.priors import prior_feeds

        student, occlusion_net = self.models()
        crops = list(crops)
        points, _ = student(crops)
        hidden, _ = occlusion_net.predict(crops)
        return prior_feeds(tuple(names), size, list(points), list(hidden))

    def describe(self) -> str:
        """A line for the model card: what the network was fed while it trained."""
        student, occlusion_net = self.models()
        return (f"training priors: the app's own ({student.model_name} points and "
                f"{occlusion_net.model_name} occlusion map, on each augmented face)")
