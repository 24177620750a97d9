"""The benchmark matrix of issue 15, as one command: `python -m app.bench_matrix --out DIR`.

Why a script: the speed tables in BENCHMARKS.md must come from an idle machine, which the
machine that writes the code seldom is; the rows (sequential vs pipelined, 1/4/8 faces, the
exact setting and face following, FaceMesh on LiteRT, `occlufer run` on a 640x480 file as
"x real time") are
listed here once, so whoever has a quiet machine reruns exactly these and pastes the table.
Each row is the real command (`occlufer bench` / `occlufer run` in a child process), its JSON
or stderr kept under DIR; `--dry-run` only prints the commands.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

#: (name, extra bench flags): the exact reference and face following at detector side 320.
SETTINGS = {"exact": [], "following": ["--detect-every", "5", "--detect-side", "320"]}
FACES = (1, 4, 8)
MODES = {"pipelined": "--pipeline", "sequential": "--no-pipeline"}


def bench_rows(frames: int, threads: str, agreement: int) -> list[tuple[str, list[str]]]:
    """(label, argv after `occlufer`) for every bench row of the matrix."""
    rows = []
    for faces in FACES:
        for setting, flags in SETTINGS.items():
            for mode, flag in MODES.items():
                extra = ["--agreement", str(agreement)] if setting != "exact" and \
                    mode == "pipelined" and agreement else []
                rows.append((f"bench faces={faces} {setting} {mode} threads={threads}",
                             ["bench", "--faces", str(faces), "--frames", str(frames),
                              "--device", "cpu", "--threads", threads, flag, *flags, *extra]))
    # FaceMesh on LiteRT (the same network, ~2x cheaper on CPUs), against the exact reference
    for faces in FACES:
        for setting, flags in SETTINGS.items():
            rows.append((f"bench faces={faces} {setting} pipelined litert threads={threads}",
                         ["bench", "--faces", str(faces), "--frames", str(frames), "--device",
                          "cpu", "--threads", threads, "--pipeline", "--landmarks",
                          "facemesh_468_tflite", *flags, "--agreement", str(agreement)]))
    # whether the pipelined executor wants one intra-op thread per session (three stages at
    # once on two cores) or onnxruntime's default (the shipped default of `occlufer run`)
    for faces in (1, 4):
        for mode, flag in MODES.items():
            rows.append((f"bench faces={faces} exact {mode} threads=ort-default",
                         ["bench", "--faces", str(faces), "--frames", str(frames), "--device",
                          "cpu", flag]))
    return rows


def write_clip(path: Path, frames: int) -> Path:
    """A 640x480 MJPG clip of the built-in demo (one face, occluders passing), the file the
    "x real time" rows analyse."""
    import cv2

    from app.sources import open_source

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (640, 480))
    with open_source("demo", loop=True) as demo:
        for i, frame in enumerate(demo):
            if i >= frames:
                break
            writer.write(frame.image)
    writer.release()
    return path


def run_rows(clip: Path, out: Path, threads: str) -> list[tuple[str, list[str]]]:
    return [(f"run file {mode} threads={threads}",
             ["run", "--source", str(clip), "--out", str(out / f"run-{mode}.csv"), "--device",
              "cpu", "--threads", threads, flag]) for mode, flag in MODES.items()]


def _summary(label: str, argv: list[str], json_path: Path | None, stderr: str) -> str:
    command = "occlufer " + " ".join(argv)
    if json_path is not None and json_path.is_file():
        r = json.loads(json_path.read_text())
        stages = " / ".join(f"{k} {v['p50']:.1f}" for k, v in r["stage_ms"].items()
                            if k in ("detect", "landmarks", "occlusion", "expression"))
        agree = r.get("agreement", {}).get("label_agreement")
        interval = r.get("interval_ms", {}).get("p95")
        return (f"| {label} | {r['fps']} | {r['frame_ms']['p50']:.1f} / {r['frame_ms']['p95']:.1f}"
                f" | {interval} | {stages} | {agree if agree is not None else ''} | `{command}` |")
    speed = re.search(r"analysed .*", stderr)
    return f"| {label} | {speed.group(0) if speed else 'failed'} | | | | | `{command}` |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the JSON reports and CSVs")
    parser.add_argument("--frames", type=int, default=300, help="timed frames per bench row")
    parser.add_argument("--threads", default="1", help="threads per session (1: one core each)")
    parser.add_argument("--agreement", type=int, default=300,
                        help="frames compared with the exact sequential reference (following rows)")
    parser.add_argument("--clip-frames", type=int, default=900, help="frames of the run clip")
    parser.add_argument("--dry-run", action="store_true", help="print the commands only")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip = out / "demo-640x480.avi"
    rows = bench_rows(args.frames, args.threads, args.agreement) + run_rows(clip, out, args.threads)
    if args.dry_run:
        for label, row in rows:
            print(f"# {label}\nocclufer {' '.join(row)}")
        return 0
    if not clip.is_file():
        write_clip(clip, args.clip_frames)
    # the LiteRT rows need the tflite in the store (read out of the FaceMesh wheel)
    subprocess.run([sys.executable, "-m", "app.cli", "models", "fetch", "facemesh_468_tflite"],
                   check=True)
    print("| row | fps (run: speed) | frame latency p50 / p95 ms | result interval p95 ms | "
          "stage p50 ms | same label | command |")
    print("|---|---|---|---|---|---|---|")
    for i, (label, row) in enumerate(rows):
        json_path = out / f"bench-{i:02d}.json" if row[0] == "bench" else None
        full = row + (["--json", str(json_path)] if json_path else [])
        done = subprocess.run([sys.executable, "-m", "app.cli", *full], capture_output=True,
                              text=True)
        (out / f"row-{i:02d}.stderr").write_text(done.stderr)
        print(_summary(label, row, json_path, done.stderr), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
