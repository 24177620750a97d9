"""Latency benchmarks on this machine, with the numbers a user can compare.

Two levels: `bench_detector` times one stage (`python -m app.bench`), `bench_pipeline` the
whole chain as `occlufer run` and the app call it (`occlufer bench`). Timings are of the
work a frame pays (frame checks, resize, normalisation, onnxruntime, decoding, NMS, mapping
back), not of a bare session. Frames are decoded before timing starts, because the app
decodes in its capture thread, in parallel with inference. Warm-up frames are excluded;
median, p95 and p99 are reported, since a mean hides the stalls a live view shows.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
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


def tile_faces(image: np.ndarray, faces: int) -> np.ndarray:
    """The frame with its content repeated on a k x k grid (k = ceil(sqrt(faces))) at the same
    frame size, so a one-face clip becomes a `faces`-face clip of the same resolution; cells
    past `faces` stay black."""
    if faces <= 1:
        return image
    k = int(np.ceil(np.sqrt(faces)))
    h, w = image.shape[:2]
    cell = cv2.resize(image, (w // k, h // k), interpolation=cv2.INTER_AREA)
    out = np.zeros_like(image)
    for i in range(faces):
        r, c = divmod(i, k)
        out[r * cell.shape[0]:(r + 1) * cell.shape[0], c * cell.shape[1]:(c + 1) * cell.shape[1]] = cell
    return out


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)} | {
        "mean": round(float(a.mean()), 3)}


def rss_mb() -> float:
    """Resident set size of this process now (Linux /proc), else the peak from getrusage."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        import resource  # POSIX only; /proc is the usual path

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_name() -> str:
    """The CPU model as the OS names it (Linux /proc/cpuinfo), else platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, str | int]:
    """What a benchmark row must name to be comparable: CPU model, cores, library versions."""
    import onnxruntime

    return {"cpu": cpu_name(), "logical_cores": os.cpu_count() or 0, "machine": platform.machine(),
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__}


def load_frames(source: str, count: int, faces: int = 1) -> list:
    """Up to `count` decoded frames of `source` (looped when shorter), `faces` tiled per frame."""
    from app.pipeline.records import Frame
    from app.sources import open_source

    frames = []
    with open_source(source, loop=True) as src:
        for frame in src:
            if len(frames) >= count:
                break
            frames.append(Frame(image=tile_faces(frame.image, faces), index=len(frames),
                                timestamp=frame.timestamp, source_time=frame.source_time))
    if not frames:
        from app.errors import SourceError

        raise SourceError(f"{source} gave no frames")
    return frames


def bench_pipeline(pipeline, frames: Sequence, runs: int, warmup: int = 10,
                   rss_every: int = 0, pipelined: bool = True) -> dict:
    """Run `pipeline.process` over `frames` (cycled) `runs` times after `warmup` frames,
    through the executor `occlufer run` uses (app/pipeline/executor.py `results`;
    `pipelined`: the detector a frame ahead and each frame's last stages while the next one
    starts; False: the stages one after another), so the bench times what users run.

    Returns end-to-end fps (frames / wall time of the timed loop), frame-latency percentiles
    (pipelined: from the moment the detector started on the frame to its last stage), the
    interval between consecutive results (pipelined, shorter than a frame's latency),
    per-stage percentiles (whatever stages the pipeline reports), faces per frame and, when
    `rss_every` > 0, the process RSS every that many frames (the soak curve)."""
    from app.errors import BadFrameError
    from app.pipeline.executor import results

    for i in range(warmup):
        pipeline.process(frames[i % len(frames)])
    frame_ms: list[float] = []
    stages: dict[str, list[float]] = {}
    faces: list[int] = []
    rss: list[tuple[int, float, float]] = []
    bad = 0
    start = time.perf_counter()
    stream = results((frames[i % len(frames)] for i in range(runs)), pipeline, pipelined)
    delivered: list[float] = []  # when each result came out: the gaps are what a view shows
    for i, (_, result) in enumerate(stream):
        delivered.append(time.perf_counter())
        if isinstance(result, BadFrameError):
            bad += 1
            continue
        frame_ms.append(result.latency_ms["frame"])
        for name, ms in result.latency_ms.items():
            if name != "frame":
                stages.setdefault(name, []).append(ms)
        faces.append(len(result.faces))
        if rss_every and i % rss_every == 0:
            rss.append((i, round(time.perf_counter() - start, 3), round(rss_mb(), 2)))
    wall = time.perf_counter() - start
    report = {
        "pipelined": pipelined, "frames": runs, "bad_frames": bad, "wall_s": round(wall, 3),
        "fps": round(len(frame_ms) / wall, 2) if wall > 0 else None,
        "frame_ms": _percentiles(frame_ms),
        "interval_ms": _percentiles(np.diff(delivered) * 1e3 if len(delivered) > 1 else []),
        "stage_ms": {name: _percentiles(v) for name, v in stages.items()},
        "faces_per_frame": round(float(np.mean(faces)), 3) if faces else 0.0,
        "rss_mb_end": round(rss_mb(), 2),
    }
    if rss:
        report["rss_curve"] = rss
    return report


def agreement(pipeline, reference, frames: Sequence) -> dict:
    """How far `pipeline` (a speed setting: following, a smaller detector side) strays from
    `reference` (the detector at full side on every frame) on the same frames, in order.

    Faces are paired by box IoU (> 0.3). Reported: faces the reference found and this one did
    not (`missed`) or the reverse (`extra`), box IoU, five-point error in inter-ocular
    distances, agreement of the top expression label, the mean total-variation distance between
    the two probability vectors, and the share of frames on which the detector ran."""
    from app.pipeline.tracker import iou_matrix

    missed = extra = ref_faces = 0
    ious, point_err, same_label, tv = [], [], [], []
    detected_frames = 0
    for frame in frames:
        got, ref = pipeline.process(frame), reference.process(frame)
        detected_frames += "detect" in got.latency_ms
        ref_faces += len(ref.faces)
        boxes_g = np.array([a.face.box for a in got.faces], np.float32).reshape(-1, 4)
        boxes_r = np.array([a.face.box for a in ref.faces], np.float32).reshape(-1, 4)
        iou = iou_matrix(boxes_r, boxes_g)
        paired = set()
        for r, truth in enumerate(ref.faces):
            g = int(np.argmax(iou[r])) if iou.shape[1] else -1
            if g < 0 or iou[r, g] <= 0.3 or g in paired:
                missed += 1
                continue
            paired.add(g)
            face = got.faces[g]
            ious.append(float(iou[r, g]))
            iod = float(np.linalg.norm(truth.face.landmarks5[0] - truth.face.landmarks5[1]))
            point_err.append(float(np.linalg.norm(face.face.landmarks5 - truth.face.landmarks5,
                                                  axis=1).mean()) / max(iod, 1e-6))
            if face.probs is not None and truth.probs is not None:
                same_label.append(face.label == truth.label)
                tv.append(0.5 * float(np.abs(face.probs - truth.probs).sum()))
        extra += len(got.faces) - len(paired)
    return {
        "frames": len(frames), "reference_faces": ref_faces, "missed": missed, "extra": extra,
        "detector_share": round(detected_frames / max(len(frames), 1), 3),
        "box_iou": _percentiles(ious) | ({"p5": round(float(np.percentile(ious, 5)), 3)} if ious else {}),
        "landmarks5_error_iod": _percentiles(point_err),
        "label_agreement": round(float(np.mean(same_label)), 4) if same_label else None,
        "probs_tv": _percentiles(tv),
    }


def bench_command(args) -> int:
    """`occlufer bench`: the whole chain on a video (or the demo), printed and written as JSON."""
    from app.pipeline.landmarks import MODEL_NAME as LANDMARK_MODEL
    from app.pipeline.pipeline import build_pipeline
    from app.runtime.store import ModelStore

    store = ModelStore(root=Path(args.store) if args.store else None)
    args.model = store.resolve_expression_model(args.model)
    frames = load_frames(args.source, max(min(args.frames, args.decode_frames), args.agreement),
                         args.faces)
    pipeline = build_pipeline(store, device=args.device, threads=args.threads,
                              detector_model=args.detector, score_threshold=args.score,
                              expression_model=args.model, max_side=args.detect_side,
                              detect_every=args.detect_every, landmark_model=args.landmarks)
    report = bench_pipeline(pipeline, frames, args.frames, warmup=args.warmup,
                            rss_every=args.rss_every, pipelined=args.pipelined)
    if args.agreement:
        reference = build_pipeline(store, device=args.device, threads=args.threads,
                                   detector_model=args.detector, score_threshold=args.score,
                                   expression_model=args.model, landmark_model=LANDMARK_MODEL)
        pipeline.reset()
        report["agreement"] = agreement(pipeline, reference, frames[:args.agreement])
    models = {name: {"provider": provider, "sha256": store.expected_sha256(name)}
              for name, provider in pipeline.providers.items()}
    report = {"command": "occlufer " + " ".join(args.argv), "date": time.strftime("%Y-%m-%d"),
              "source": args.source, "size": list(frames[0].image.shape[1::-1]),
              "faces_tiled": args.faces, "device": args.device, "threads": args.threads,
              "models": models, "skipped": dict(pipeline.skipped), "machine": machine_info(),
              **report}
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")
    stages = " ".join(f"{k} {v['p50']:.2f}" for k, v in report["stage_ms"].items())
    print(f"{report['fps']} fps | frame p50 {report['frame_ms']['p50']:.2f} p95 "
          f"{report['frame_ms']['p95']:.2f} p99 {report['frame_ms']['p99']:.2f} ms | interval "
          f"p50 {report['interval_ms'].get('p50', 0):.2f} p95 "
          f"{report['interval_ms'].get('p95', 0):.2f} ms | "
          f"stage p50 ms: {stages} | faces/frame {report['faces_per_frame']} | "
          f"{'pipelined' if report['pipelined'] else 'sequential'} | "
          "providers " + ", ".join(f"{k}={v['provider']}" for k, v in models.items()))
    if "agreement" in report:
        a = report["agreement"]
        print(f"vs detector at 640 on every frame ({a['frames']} frames): detector ran on "
              f"{a['detector_share']:.0%}, missed {a['missed']}/{a['reference_faces']}, extra "
              f"{a['extra']}, box IoU p50 {a['box_iou'].get('p50')} p5 {a['box_iou'].get('p5')}, "
              f"5-point error p50 {a['landmarks5_error_iod'].get('p50')} IOD, same label "
              f"{a['label_agreement']}, probs TV p50 {a['probs_tv'].get('p50')}")
    return 0


def add_bench_args(p) -> None:
    p.add_argument("--source", default="demo", help="video, image, folder or `demo` (default)")
    p.add_argument("--faces", type=int, default=1,
                   help="tile the source k x k so each frame holds this many faces")
    p.add_argument("--frames", type=int, default=300, help="timed frames")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--decode-frames", type=int, default=300,
                   help="frames decoded ahead and cycled (memory bound)")
    p.add_argument("--model", default="default",
                   help="expression model (default: the best shipped model, the manifest's "
                        "default_expression; `none` or '' for none)")
    p.add_argument("--rss-every", type=int, default=0,
                   help="record the process RSS every N frames (soak curve)")
    p.add_argument("--agreement", type=int, default=0, metavar="N",
                   help="also run the first N frames through the reference pipeline (detector "
                        "at 640 on every frame) and report how far this setting strays from it")
    p.add_argument("--json", help="write the report here")


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
