"""Soak check: a long `occlufer run` (recording a CSV) with its memory and latency watched.

A live tool that leaks a little per frame dies after an hour on a lab's webcam, and a tool
whose latency creeps up falls behind; neither shows in a 300-frame benchmark. This script
runs the real command as a user would (the built-in demo looped, which renders a new frame
each time, every stage on, the CSV flushed as it goes), samples the child's resident memory
from /proc every `--every` seconds, then reads the per-frame latency back from the CSV it
wrote. It reports (JSON) and draws (PNG) both curves, and judges them: memory flat within
5 % between the end of warm-up (the first 10 % of the run) and the end; latency's median over
the last 10 % of frames within 10 % of that over the 10-20 % window.

`--app` soaks the desktop app instead (offscreen Qt, `QT_QPA_PLATFORM=offscreen` unless a
display is set): the real main window opens the demo looped, records from the first analysed
frame and stops the recording after the video time; the app paces files and the demo at their
frame rate, so N minutes of video take N minutes, and frames the pipeline cannot keep up with
are dropped as they are live (the CSV says how many were analysed).

`python -m app.soak --video-minutes 30 --out soak/ [--app]` (Linux: /proc).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FPS = 30.0  # the demo source's frame rate: N minutes of video = N * 60 * 30 frames


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def frame_latencies(csv_path: Path) -> np.ndarray:
    """frame_ms of every frame (one value per frame, the first row of each)."""
    seen, values = set(), []
    with open(csv_path, newline="") as handle:
        for row in csv.DictReader(handle):
            frame = row["frame"]
            if frame in seen or not row.get("frame_ms"):
                continue
            seen.add(frame)
            values.append(float(row["frame_ms"]))
    return np.asarray(values)


def judge(times: np.ndarray, rss: np.ndarray, latency: np.ndarray) -> dict:
    n = len(rss)
    warm = rss[int(n * 0.1):max(int(n * 0.2), int(n * 0.1) + 1)]
    end = rss[int(n * 0.9):]
    rss_change = float((np.median(end) - np.median(warm)) / np.median(warm) * 100)
    m = len(latency)
    early = float(np.median(latency[int(m * 0.1):int(m * 0.2)]))
    late = float(np.median(latency[int(m * 0.9):]))
    return {
        "rss_mb_after_warmup": round(float(np.median(warm)), 1),
        "rss_mb_end": round(float(np.median(end)), 1),
        "rss_mb_max": round(float(rss.max()), 1),
        "rss_change_percent": round(rss_change, 2),
        "rss_flat_within_5_percent": abs(rss_change) <= 5.0,
        "frame_ms_median_10_20_percent": round(early, 2),
        "frame_ms_median_last_10_percent": round(late, 2),
        "latency_change_percent": round((late - early) / early * 100, 2),
        "latency_flat_within_10_percent": abs(late - early) <= 0.1 * early,
        "frames": int(m),
        "wall_minutes": round(float(times[-1] / 60), 2) if len(times) else 0.0,
    }


def plot(times: np.ndarray, rss: np.ndarray, latency: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), dpi=100)
    top.plot(times / 60, rss, lw=1.2)
    top.set_ylabel("RSS (MB)")
    top.set_xlabel("wall time (min)")
    top.set_ylim(0, rss.max() * 1.15)
    window = max(1, len(latency) // 200)
    rolling = np.convolve(latency, np.ones(window) / window, mode="valid")
    bottom.plot(np.arange(len(rolling)) / FPS / 60, rolling, lw=1.0)
    bottom.set_ylabel(f"frame ms (mean of {window})")
    bottom.set_xlabel("video time (min)")
    bottom.set_ylim(0, np.percentile(rolling, 99.5) * 1.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def app_child(minutes: float, out: Path, model: str, threads: int, detect_every: int) -> int:
    """The desktop app, offscreen: demo looped, record `minutes` of it, quit. Writes the
    recording folder's path to out/app_session.txt for the parent."""
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    from app.ui.main_window import MainWindow
    from app.ui.settings import AppSettings

    app = QApplication.instance() or QApplication(sys.argv[:1])
    settings = AppSettings(QSettings(str(out / "settings.ini"), QSettings.Format.IniFormat))
    settings.output_dir = out / "sessions"
    window = MainWindow(settings=settings, source="demo", model=model, device="cpu",
                        threads=threads, pipeline_options={"detect_every": detect_every})
    window.show()
    window.loop_check.setChecked(True)
    window.limit_spin.setValue(0)  # until stopped: the soak stops it by the clock
    window.start()
    state: dict = {"since": None}

    def tick() -> None:
        if state["since"] is None:  # record from the first analysed frame, once
            if window.session.state == "running" and window.last_update is not None:
                window.record_action.trigger()
                state["since"] = time.monotonic()
            return
        recording = window.recording
        if recording is None:  # the recorder's first status is on its way
            return
        if recording.active and time.monotonic() - state["since"] >= minutes * 60:
            # ask the session directly, and again each tick until it has stopped: toggling the
            # checkable action once did not stop a 30-minute recording (2026-12-02)
            window.session.stop_recording("soak: video time reached")
        elif not recording.active:
            (out / "app_session.txt").write_text(str(recording.folder))
            window.stop()
            app.quit()

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(250)
    return int(app.exec())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video-minutes", type=float, default=30.0)
    parser.add_argument("--out", type=Path, required=True, help="folder for session.csv, soak.json, soak.png")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between RSS samples")
    parser.add_argument("--model", default="resnet18_fast")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--detect-every", type=int, default=1)
    parser.add_argument("--app", action="store_true",
                        help="soak the desktop app (offscreen) instead of `occlufer run`")
    parser.add_argument("--app-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.app_child:
        return app_child(args.video_minutes, args.out, args.model, args.threads,
                         args.detect_every)
    frames = int(args.video_minutes * 60 * FPS)
    if args.app:
        command = [sys.executable, "-m", "app.soak", "--app-child", "--video-minutes",
                   str(args.video_minutes), "--out", str(args.out), "--model", args.model,
                   "--threads", str(args.threads), "--detect-every", str(args.detect_every)]
    else:
        command = [sys.executable, "-m", "app.cli", "run", "--source", "demo", "--loop",
                   "--max-frames", str(frames), "--out", str(args.out / "session.csv"),
                   "--model", args.model, "--device", "cpu", "--threads", str(args.threads),
                   "--detect-every", str(args.detect_every)]
    started = time.perf_counter()
    # the child's stderr goes to a file: a 30-minute run can say more than a pipe's buffer holds
    log = open(args.out / "child.log", "w")
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, text=True)
    times, rss = [], []
    while child.poll() is None:
        value = rss_mb(child.pid)
        if value is not None:
            times.append(time.perf_counter() - started)
            rss.append(value)
        time.sleep(args.every)
    log.close()
    err = (args.out / "child.log").read_text(errors="replace")
    what = "the app" if args.app else "occlufer run"
    if child.returncode != 0:
        print(f"{what} failed ({child.returncode}):\n{err[-2000:]}", file=sys.stderr)
        return 1
    csv_path = (Path((args.out / "app_session.txt").read_text()) / "frames.csv" if args.app
                else args.out / "session.csv")
    latency = frame_latencies(csv_path)
    t, r = np.asarray(times), np.asarray(rss)
    verdict = judge(t, r, latency)
    shown = (["python", "-m", "app.soak", *(argv if argv is not None else sys.argv[1:])]
              if args.app else ["occlufer", *command[3:]])
    report = {"command": " ".join(shown), "date": time.strftime("%Y-%m-%d"),
              "video_minutes": args.video_minutes, "frames_analysed": int(len(latency)),
              "csv": str(csv_path), **verdict,
              "rss_curve": [[round(a, 1), round(b, 1)] for a, b in zip(times, rss)]}
    (args.out / "soak.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (f"{what}, demo looped {args.video_minutes:g} min of video, {args.threads} thread(s), "
             f"detect every {args.detect_every}: RSS {verdict['rss_change_percent']:+.1f} %, "
             f"latency {verdict['latency_change_percent']:+.1f} %")
    plot(t, r, latency, title, args.out / "soak.png")
    print(json.dumps(verdict, indent=2))
    return 0 if verdict["rss_flat_within_5_percent"] and verdict["latency_flat_within_10_percent"] else 2


if __name__ == "__main__":
    sys.exit(main())
