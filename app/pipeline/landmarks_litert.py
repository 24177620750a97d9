"""FaceMesh through LiteRT on CPUs: the original `face_landmark.tflite`, not its ONNX
conversion (manifest name ``facemesh_468_tflite``, `--landmarks facemesh_468_tflite`).

Why: FaceMesh is the largest per-face stage, and XNNPACK (LiteRT's CPU delegate) runs this
network about twice as fast as onnxruntime runs the converted graph on the development CPU
(measured 2.1 vs 3.7 ms for the whole landmark call on one face), with the same points (max
|diff| 1.5e-4 px on 120 demo faces; top label identical on 360 demo frames; BENCHMARKS.md).
Everything around the network - the ROI from the detector box, the warp, mapping the points
back, presence - is `FaceMeshLandmarker`'s, so the two backends differ only in `run_inputs`.
FaceMesh is Google's network, not one occlufer trains, so onnxruntime stays the runtime of
every network occlufer trains. LiteRT runs on the CPU only; ai-edge-litert comes with the
`[convert]` extra that builds the ONNX FaceMesh anyway.

A LiteRT interpreter must not be invoked from two threads at once; the pipeline calls
FaceMesh from `FacePipeline.start` only, which runs on one thread in frame order.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from app.errors import ModelIntegrityError, OccluferError
from app.pipeline.landmarks import INPUT_SIZE, NUM_POINTS, ROI_SCALE, FaceMeshLandmarker
from app.runtime.providers import Device
from app.runtime.store import ModelStore

MODEL_NAME = "facemesh_468_tflite"
PROVIDER = "LiteRT-CPU"


class LiteRTFaceMeshLandmarker(FaceMeshLandmarker):
    """`FaceMeshLandmarker` with the network run by a LiteRT interpreter, one face per call
    (the tflite has a fixed batch of 1)."""

    def __init__(self, path: Path, threads: int | None = None, roi_scale: float = ROI_SCALE,
                 model_name: str = MODEL_NAME) -> None:
        try:
            interpreter_module = importlib.import_module("ai_edge_litert.interpreter")
        except ImportError as exc:
            raise OccluferError(
                f"{model_name} runs on LiteRT, which is not installed ({exc}): "
                "pip install -e '.[convert]' (or use --landmarks facemesh_468)") from exc
        self.session = None  # no onnxruntime session: `run_inputs` and `provider` are ours
        self.roi_scale, self.model_name = roi_scale, model_name
        self.interpreter = interpreter_module.Interpreter(model_path=str(path),
                                                          num_threads=threads or 1)
        self.interpreter.allocate_tensors()
        inputs = self.interpreter.get_input_details()
        if len(inputs) != 1 or list(inputs[0]["shape"][1:]) != [INPUT_SIZE, INPUT_SIZE, 3]:
            raise ModelIntegrityError(f"{model_name}: input {[i['shape'] for i in inputs]} is "
                                      f"not FaceMesh's (1, {INPUT_SIZE}, {INPUT_SIZE}, 3)")
        self.input_index = inputs[0]["index"]
        self.size, self.channels_last, self.fixed_batch = INPUT_SIZE, True, True
        outputs = {int(np.prod(o["shape"][1:])): o["index"]
                   for o in self.interpreter.get_output_details()}
        if NUM_POINTS * 3 not in outputs or 1 not in outputs:
            raise ModelIntegrityError(f"{model_name}: outputs are not FaceMesh's (1404 landmark "
                                      "values and 1 face flag)")
        self.points_index, self.presence_index = outputs[NUM_POINTS * 3], outputs[1]

    @classmethod
    def from_store(cls, name: str = MODEL_NAME, store: ModelStore | None = None,
                   device: Device = "auto", threads: int | None = None) -> "LiteRTFaceMeshLandmarker":
        """`device` is accepted for the loaders' common signature: LiteRT runs on the CPU."""
        store = store or ModelStore()
        return cls(store.verified_path(name), threads, model_name=name)

    @property
    def provider(self) -> str:
        return PROVIDER

    def run_inputs(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw network on (N, 3, S, S) inputs: (N, 468, 3) input-pixel points, (N,) logits."""
        points, logits = [], []
        for one in batch:
            self.interpreter.set_tensor(self.input_index,
                                        np.ascontiguousarray(one.transpose(1, 2, 0))[None])
            self.interpreter.invoke()
            points.append(self.interpreter.get_tensor(self.points_index).reshape(NUM_POINTS, 3))
            logits.append(float(self.interpreter.get_tensor(self.presence_index).reshape(())))
        return (np.asarray(points, np.float32).reshape(len(batch), NUM_POINTS, 3),
                np.asarray(logits, np.float32))


__all__ = ["LiteRTFaceMeshLandmarker", "MODEL_NAME"]
