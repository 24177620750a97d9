"""Latency benchmarks of pipeline stages on this machine, with the numbers a user can compare.

Timings are of the whole stage as the pipeline calls it (frame checks, resize, mean
subtraction, onnxruntime, decoding, NMS), not of the session alone, because that is what a
frame pays. Warm-up runs are excluded; median and 95th percentile are reported, since a single
mean hides the stalls a live view shows.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import cv2
import numpy as np

from app import ASSETS_DIR
from app.pipeline.detector import RetinaFaceDetector
from app.sources import read_image
from app.runtime.providers import Device, create_session, session_provider


def astronaut_frame(width: int, height: int) -> np.ndarray:
    """The public-domain astronaut photo (one face) scaled to fit width x height and padded
    with black, BGR uint8; the face stays a realistic fraction of the frame at every size."""
    image = read_image(ASSETS_DIR / "samples" / "astronaut.jpg")  # shipped: works without [dev]
    scale = min(width / image.shape[1], height / image.shape[0])
    size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    frame = np.zeros((height, width, 3), dtype=np.uint8)
    top, left = (height - size[1]) // 2, (width - size[0]) // 2
    frame[top:top + size[1], left:left + size[0]] = image
    return frame


def bench_detector(
    model: Path | str,
    width: int,
    height: int,
    threads: int | None = None,
    runs: int = 200,
    device: Device = "cpu",
    warmup: int = 10,
    max_side: int | None = 640,
) -> dict:
    """Time `RetinaFaceDetector` on the astronaut frame of width x height, `runs` times.

    Returns median/p95/mean/min in milliseconds plus what was measured (size, threads,
    provider, faces found) so a row of results is self-describing.
    """
    if runs < 1:
        raise ValueError("runs must be positive")
    detector = RetinaFaceDetector(create_session(model, device, threads), max_side=max_side)
    frame = astronaut_frame(width, height)
    for _ in range(warmup):
        faces = detector(frame)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        faces = detector(frame)
        times[i] = (time.perf_counter() - start) * 1000.0
    return {
        "model": Path(model).name,
        "width": width,
        "height": height,
        "threads": threads,
        "runs": runs,
        "median_ms": round(float(np.median(times)), 3),
        "p95_ms": round(float(np.percentile(times, 95)), 3),
        "mean_ms": round(float(times.mean()), 3),
        "min_ms": round(float(times.min()), 3),
        "faces": len(faces),
        "provider": session_provider(detector.session),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def main(argv: list[str] | None = None) -> int:
    """`python -m app.bench --model retinaface.onnx`: detector latency table (Markdown)."""
    import argparse

    parser = argparse.ArgumentParser(description="Detector latency on the astronaut frame.")
    parser.add_argument("--model", default="retinaface_mnet025",
                        help="RetinaFace model name in the store, or an ONNX file")
    parser.add_argument("--sizes", nargs="+", default=["640x480", "320x240"], help="WxH frames")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args(argv)
    if not Path(args.model).is_file():
        from app.runtime.store import ModelStore

        args.model = ModelStore().verified_path(args.model)
    print("| model | frame | threads | median ms | p95 ms | faces | provider |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        for threads in args.threads:
            r = bench_detector(args.model, width, height, threads, args.runs, args.device)
            print(f"| {r['model']} | {width}x{height} | {threads} | {r['median_ms']:.2f} | "
                  f"{r['p95_ms']:.2f} | {r['faces']} | {r['provider']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
