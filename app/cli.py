"""The `occlufer` command.

Runtime subcommands (models, detect, run, bench, doctor, gpu-check) use onnxruntime only; train, eval, export
and occlude import the torch-side packages lazily, so a runtime-only install still starts.
Every OccluferError is printed as one clear message (no traceback) with a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from app import __version__
from app.errors import OccluferError

DEVICES = ("auto", "cpu", "cuda")


def _store(args: argparse.Namespace):
    from app.runtime.store import ModelStore

    return ModelStore(root=Path(args.store) if getattr(args, "store", None) else None)


# ------------------------------------------------------------------ models
def cmd_models(args: argparse.Namespace) -> int:
    store = _store(args)
    names = args.names or store.names()
    if args.action == "list":
        print(f"{'name':<24} {'task':<12} {'status':<8} path")
        for name in names:
            state = store.state(name)
            print(f"{name:<24} {store.entry(name).get('task', ''):<12} {state.status:<8} {state.path}")
        return 0
    if args.action == "fetch":
        from_dir = Path(args.from_dir).expanduser() if args.from_dir else None
        failed = []
        for name in names:
            needs = store.needs_from_dir(name)
            if needs and from_dir is None and not args.names:
                # `models fetch` alone installs what can be installed without local files
                print(f"{name}: skipped  (built from {needs}: "
                      f"occlufer models fetch {name} --from DIR)")
                continue
            try:
                path = store.fetch(name, from_dir=from_dir, force=args.force)
                print(f"{name}: ok  {path}")
            except OccluferError as exc:
                failed.append(name)
                print(f"{name}: FAILED  {exc}", file=sys.stderr)
        return 1 if failed else 0
    bad = 0
    for name in names:  # verify
        state = store.state(name)
        bad += state.status != "ok"
        print(f"{name:<24} {state.status:<8} {state.detail}")
    return 1 if bad else 0


# ------------------------------------------------------------------ detect / run
def _pipeline(args: argparse.Namespace):
    from app.pipeline.pipeline import build_pipeline
    from app.run_rows import pipeline_kwargs

    return build_pipeline(_store(args), **pipeline_kwargs(getattr(args, "model", None),
                                                          _pipeline_options(args)))


def _face_json(face) -> dict:
    return {"box": [round(float(v), 2) for v in face.box], "score": round(float(face.score), 4),
            "landmarks5": [[round(float(x), 2), round(float(y), 2)] for x, y in face.landmarks5]}


def cmd_detect(args: argparse.Namespace) -> int:
    from app.sources import read_image

    image = read_image(Path(args.image))
    pipeline = _pipeline(args)
    faces = pipeline.detector(image)
    if args.json:
        print(json.dumps({"image": args.image, "size": list(image.shape[:2][::-1]),
                          "faces": [_face_json(f) for f in faces]}, indent=2))
    else:
        print(f"{len(faces)} face(s) in {args.image}")
        for i, face in enumerate(faces):
            box = ", ".join(f"{v:.0f}" for v in face.box)
            print(f"  [{i}] score {face.score:.3f}  box [{box}]")
    return 0


def _pipeline_options(args: argparse.Namespace) -> dict:
    """The run options of `args`, named as app.run_rows (and app.api) name them."""
    from app.run_rows import PIPELINE_DEFAULTS

    return {name: getattr(args, name) for name in PIPELINE_DEFAULTS}


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from app.recording import CsvRecorder
    from app.run_rows import RunRows

    # the one row-producing path, shared with app.api.analyze; the source is opened (and
    # fails) before any file is created
    with RunRows.open(args.source, model=args.model, store=_store(args), loop=args.loop,
                      read_ahead=args.read_ahead, pipelined=args.pipelined,
                      **_pipeline_options(args)) as run:
        print(f"providers: {run.pipeline.providers}", file=sys.stderr)
        with CsvRecorder(Path(args.out), run.columns) as recorder:
            progress = tqdm(total=args.max_frames, unit="frame", desc="run", disable=None)
            for rows in run.frames(args.max_frames):
                for row in rows:
                    recorder.write(row)
                progress.update(1)
            progress.close()
    bad_frames = run.bad_frames
    print(f"wrote {recorder.rows} rows to {args.out}" + (f" ({bad_frames} bad frames skipped)"
                                                        if bad_frames else ""), file=sys.stderr)
    speed = run.speed()
    if speed["fps"] is not None:  # "x real time": how long hours of recorded video take
        realtime = f", {speed['x_real_time']}x real time (source at {speed['source_fps']:g} fps)" \
            if speed["x_real_time"] else ""
        print(f"analysed {speed['frames']} frames in {speed['wall_s']:.1f} s: {speed['fps']} fps"
              f"{realtime}; {'pipelined' if run.pipelined else 'sequential'}", file=sys.stderr)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from app.report import write_report  # matplotlib only when a report is asked for

    report = write_report(Path(args.session), Path(args.out))
    for note in report.notes:
        print(f"note: {note}", file=sys.stderr)
    print(f"wrote {report.html} and {len(report.figures)} figures "
          f"({report.summary.rows} rows, {len(report.summary.tracks)} tracks)")
    return 0


def cmd_app(args: argparse.Namespace) -> int:
    from app.ui.app_main import run_app  # Qt only when the window is asked for

    return run_app(source=args.source, model=args.model, device=args.device,
                   threads=args.threads, detector=args.detector, store=_store(args),
                   pipeline_options={"max_side": args.detect_side,
                                     "detect_every": args.detect_every,
                                     "landmark_model": args.landmarks,
                                     "pipelined": args.pipelined})


def cmd_bench(args: argparse.Namespace) -> int:
    from app.bench import bench_command

    return bench_command(args)


def cmd_doctor(args: argparse.Namespace) -> int:
    from app.doctor import doctor_command

    return doctor_command(args)


def cmd_gpu_check(args: argparse.Namespace) -> int:
    from app.gpu_check import gpu_check_command

    return gpu_check_command(args)


# ------------------------------------------------------------------ torch-side commands
def _torch_side(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise OccluferError(
            f"This command needs the training extra ({exc.name} is missing): "
            "pip install torch==2.13.0 -e '.[train]'"
        ) from exc


def cmd_export(args: argparse.Namespace) -> int:
    exporter = _torch_side("exporters.retinaface")
    out = exporter.export_retinaface(Path(args.weights), Path(args.out))
    print(f"wrote {out}")
    return 0


def cmd_occlude(args: argparse.Namespace) -> int:
    occlusion = _torch_side("training.occlusion")
    argv = ["--data-root", args.data_root, "--out", args.out, "--seed", str(args.seed)]
    if args.kinds:
        argv += ["--kinds", *args.kinds]
    return int(occlusion.main(argv) or 0)


def _add_runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="where onnxruntime runs the models (auto: CUDA when it really loads)")
    p.add_argument("--threads", type=int, default=None, help="threads per model session")
    p.add_argument("--score", type=float, default=0.5, help="face score threshold")
    p.add_argument("--detector", default="retinaface_mnet025",
                   help="face detector model from the store")
    p.add_argument("--detect-side", type=int, default=640,
                   help="longest side the detector sees (frames are scaled down to it; 320 is "
                        "~4x cheaper and misses faces under ~20 px)")
    p.add_argument("--detect-every", type=int, default=1,
                   help="run the detector every N frames and follow faces by their landmarks "
                        "in between (re-detects at once when a face is lost; 1 = every frame)")
    p.add_argument("--store", help="model store directory (default: $OCCLUFER_HOME/models "
                                   "or ~/.cache/occlufer/models)")
    p.add_argument("--landmarks", default="auto",
                   help="FaceMesh model: facemesh_468 (ONNX on onnxruntime), "
                        "facemesh_468_tflite (the same network on LiteRT, CPU only, ~2x faster) "
                        "or auto (default: LiteRT when the chain runs on the CPU and LiteRT and "
                        "its model are installed, else onnxruntime)")
    p.add_argument("--pipeline", dest="pipelined", action=argparse.BooleanOptionalAction,
                   default=True, help="run the face detector on the next frame while this "
                   "frame's faces are analysed, on another core (same rows; --no-pipeline: "
                   "one stage after another)")


def build_parser(training: bool = False) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="occlufer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"occlufer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("models", help="list, fetch or verify model files")
    p.add_argument("action", choices=("list", "fetch", "verify"))
    p.add_argument("names", nargs="*", help="model names (default: all)")
    p.add_argument("--from", dest="from_dir", help="directory holding model files or checkpoints "
                                                   "(e.g. ../shared/weights)")
    p.add_argument("--force", action="store_true", help="fetch again even if present and intact")
    p.add_argument("--store", help="model store directory")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("detect", help="detect faces in one image")
    p.add_argument("image")
    p.add_argument("--json", action="store_true", help="print detections as JSON")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_detect)

    from app.run_rows import DEFAULT_MODEL  # one default for `occlufer run` and app.api

    p = sub.add_parser("run", help="run the pipeline headless and write a CSV")
    p.add_argument("--source", required=True, help="camera index, video, image, folder or `demo`")
    p.add_argument("--out", required=True, help="CSV file to write")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--loop", action="store_true", help="loop files (with --max-frames)")
    p.add_argument("--read-ahead", type=int, default=4, metavar="N",
                   help="decode files and the demo up to N frames ahead in a thread while "
                        "frames are analysed (0: off; cameras never read ahead)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="expression model (label and class probability columns; default: the "
                        "best shipped model, the manifest's default_expression; `none` for no "
                        "expression stage)")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("report", help="figures and report.html from a recorded session")
    p.add_argument("session", help="a session folder (frames.csv, metadata.json) or a CSV of "
                                   "`occlufer run`")
    p.add_argument("--out", required=True, help="folder for report.html and the PNG figures")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("app", help="the desktop app: live view, overlays, model switch, recording")
    p.add_argument("--source", help="camera index, video, image, folder or `demo` (starts at once)")
    p.add_argument("--model", help="expression model to start with (default: the last one "
                                   "used, else the best shipped model)")
    _add_runtime_options(p)
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("bench", help="time the whole pipeline: fps, frame and stage latency")
    from app.bench import add_bench_args

    add_bench_args(p)
    _add_runtime_options(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("doctor", help="what this machine has (CUDA, Qt, cameras, models, disk) "
                                      "and the command that fixes what is wrong")
    from app.doctor import add_doctor_args

    add_doctor_args(p)
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("gpu-check", help="the GPU acceptance run: providers, CUDA-vs-CPU parity, "
                                         "fps for 1/4/16 faces, training throughput (JSON)")
    from app.gpu_check import add_gpu_check_args

    add_gpu_check_args(p)
    p.set_defaults(func=cmd_gpu_check)

    p = sub.add_parser("export", help="export RetinaFace weights (.pth) to verified ONNX")
    p.add_argument("network", choices=("retinaface",))
    p.add_argument("--weights", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("occlude", help="write the fixed occluded and camera-degraded FERPlus "
                                       "test sets")
    p.add_argument("--data-root", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", nargs="*")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_occlude)

    _add_training_commands(sub, load=training)
    return parser


def _add_training_commands(sub, load: bool) -> None:
    """train/eval take their options from training.cli, imported only when one is asked for
    (it pulls in torch, which the runtime commands must never load)."""
    for name, help_text in (("train", "train an expression network (needs [train])"),
                            ("eval", "evaluate an ONNX expression model on a data set")):
        p = sub.add_parser(name, help=help_text)
        if load:
            training_cli = _torch_side("training.cli")
            getattr(training_cli, f"add_{name}_args")(p)
            p.set_defaults(func=getattr(training_cli, f"run_{name}"))
    p = sub.add_parser("train-perception", help="train the occlusion-map + face-parsing network "
                                                "(needs [train])")
    if load:
        perception = _torch_side("training.perception.train")
        perception.add_train_perception_args(p)
        p.set_defaults(func=perception.run_train_perception)
    p = sub.add_parser("train-landmarks", help="train the occlusion-robust 68-point landmark "
                                               "student (needs [train])")
    if load:
        student = _torch_side("training.landmark_student")
        student.add_args(p)
        p.set_defaults(func=lambda args: student.main(args.argv[1:]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        wants_training = bool(argv) and argv[0] in ("train", "eval", "train-perception",
                                                     "train-landmarks")
        args = build_parser(training=wants_training).parse_args(argv)
        args.argv = list(argv)
        return int(args.func(args) or 0)
    except OccluferError as exc:
        print(f"occlufer: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("occlufer: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
