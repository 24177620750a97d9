"""The pipelined executor (app/pipeline/executor.py): the detector runs one frame ahead on
another thread, and nothing else changes.

Everything here is real: RetinaFace, FaceMesh, the landmark student, the occlusion U-Net and
the shipped expression model from the store, on the built-in demo (whose occluders make
followed faces drop out, so the forecast of the executor is sometimes wrong). What is compared
is everything that can repeat between two runs: labels, probabilities, boxes, points, track
ids, the detected flag; never timestamps or latencies. Speed is never asserted (BENCHMARKS.md).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from app import REPO_ROOT
from app.api import analyze
from app.bench import load_frames
from app.errors import SourceError
from app.pipeline.executor import pipelined, results
from app.pipeline.pipeline import build_pipeline
from app.pipeline.records import Frame
from app.pipeline.tracker import IouTracker
from app.run_rows import RunRows
from app.session_csv import typed_row
from app.session_rows import SessionSchema
from app.sources import open_source
from tests.app_support import install_facemesh

MODEL = "resnet18_fast"
WORKER = "occlufer-detect-ahead"


@pytest.fixture(scope="module")
def store(model_store, retinaface_onnx):
    """The session's store with every stage of the chain (FaceMesh built from its wheel)."""
    if not install_facemesh(model_store):
        pytest.skip("the whole chain needs the FaceMesh stage ([convert] extra)")
    return model_store


class ThreadNotingDetector:
    """The real detector, noting the thread each call ran on (the executor's worker, or the
    thread that analyses the faces)."""

    def __init__(self, detector) -> None:
        self.detector, self.threads = detector, []

    def __call__(self, image: np.ndarray):
        self.threads.append(threading.current_thread().name)
        return self.detector(image)


def _repeatable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "timestamp" and not k.endswith("_ms")}


@pytest.mark.parametrize("options", [{}, {"detect_every": 5, "detect_side": 320}],
                         ids=["exact", "following"])
def test_pipelined_rows_are_the_sequential_rows_on_the_demo(store, options):
    frames = 90
    one_by_one = analyze("demo", model=MODEL, max_frames=frames, store=store, device="cpu",
                         threads=1, pipelined=False, **options)
    ahead = analyze("demo", model=MODEL, max_frames=frames, store=store, device="cpu",
                    threads=1, **options)  # pipelined is the default
    assert len(ahead) == len(one_by_one) >= frames
    assert {r["label"] for r in ahead} - {None}, "the demo face is classified"
    assert [r["track_id"] for r in ahead] == [r["track_id"] for r in one_by_one]
    assert [_repeatable(r) for r in ahead] == [_repeatable(r) for r in one_by_one]
    detected = [r["detected"] for r in ahead]
    if options:
        assert 0 in detected and 1 in detected, "following: some frames detected, some followed"
    else:
        assert set(detected) == {1}


def _faces(result) -> list[tuple]:
    return [(a.face.track_id, a.face.detected, a.label, a.face.box.tobytes(),
             a.face.landmarks5.tobytes(), None if a.probs is None else a.probs.tobytes(),
             None if a.landmarks68 is None else a.landmarks68.tobytes())
            for a in result.faces]


def _lost_and_found(frames: list[Frame]) -> list[Frame]:
    """Demo frames with four faces, where frames 7-8 are black (every face gone) and frame 18
    loses its right half (two followed faces land on nothing): the executor's forecast that
    the faces are followed is wrong there."""
    out = []
    for i, frame in enumerate(frames):
        image = frame.image
        if i in (7, 8):
            image = np.zeros_like(image)
        elif i == 18:
            image = image.copy()
            image[:, image.shape[1] // 2:] = 0
        out.append(Frame(image=image, index=i, timestamp=frame.timestamp))
    return out


def test_four_faces_lost_and_found_give_the_sequential_results(store):
    """Tracking, following and the forecast across faces that vanish and reappear: the
    pipelined path detects ahead on its worker, falls back to the detector on the spot where
    the forecast was wrong, and gives exactly the sequential results."""
    frames = _lost_and_found(load_frames("demo", 30, faces=4))
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL,
                              detect_every=4)
    detector = ThreadNotingDetector(pipeline.detector)
    pipeline.detector = detector
    one_by_one = [pipeline.process(f) for f in frames]
    reference = [_faces(r) for r in one_by_one]
    assert {len(r) for r in reference} >= {0, 4}
    detected = ["detect" in r.latency_ms for r in one_by_one]
    assert detected[7] and detected[18] and not detected[6] and not detected[19]
    assert not set(detector.threads) - {threading.current_thread().name}
    pipeline.reset()
    pipeline.tracker = IouTracker()  # reset() keeps counting ids up; start at 1 again
    detector.threads.clear()
    got = [_faces(pipeline.process(p.frame, p.detection)) for p in pipelined(frames, pipeline)]
    assert got == reference, "the app's path: the detector ahead, the rest in order"
    threads_app = list(detector.threads)
    pipeline.reset()
    pipeline.tracker = IouTracker()
    detector.threads.clear()
    outcomes = list(results(frames, pipeline))
    assert [f.index for f, _ in outcomes] == list(range(len(frames)))
    assert [_faces(r) for _, r in outcomes] == reference, "run's path: finish beside start"
    assert detector.threads == threads_app
    on_worker = sum(t.startswith(WORKER) for t in detector.threads)
    on_the_spot = len(detector.threads) - on_worker
    assert on_worker >= 5, "the detector ran ahead on the worker thread"
    assert on_the_spot >= 2, "the follows that failed (frames 7 and 18) detect on the spot"


class CountingSource:
    """The looping demo, counting every frame it hands out (to see how far a reader runs)."""

    fps = 30.0

    def __init__(self) -> None:
        self.demo = open_source("demo", loop=True)
        self.pulled = 0

    def __iter__(self):
        for frame in self.demo:
            self.pulled += 1
            yield frame

    def close(self) -> None:
        self.demo.close()


@pytest.mark.parametrize("ahead", [True, False], ids=["pipelined", "sequential"])
def test_a_stalled_sink_stops_the_source_instead_of_queueing(store, ahead):
    pipeline = build_pipeline(store, device="cpu", threads=1, landmark_model=None,
                              occlusion_model=None, student_model=None)
    source, depth = CountingSource(), 4
    run = RunRows(source=source, pipeline=pipeline, schema=SessionSchema(), model=None,
                  read_ahead=depth, pipelined=ahead)
    rows = run.frames()
    seen = [next(rows)[0]["frame"] for _ in range(3)]
    time.sleep(1.0)  # the sink stalls: an unbounded reader would render ~100 demo frames now
    stalled = source.pulled
    # 3 consumed, pipelined <= 2 more in the executor (one finishing, one detected ahead),
    # `depth` queued by the reader and 1 held by it, blocked on the full queue
    assert stalled <= 3 + 2 * int(ahead) + depth + 1
    time.sleep(0.5)
    assert source.pulled == stalled, "nothing grows while the sink stalls"
    seen += [next(rows)[0]["frame"] for _ in range(5)]
    assert seen == list(range(8)), "frames resume in order, none lost"
    rows.close()
    source.close()


def test_occlufer_run_with_and_without_the_pipeline_writes_the_same_csv(store, tmp_path):
    env = {**os.environ, "OCCLUFER_HOME": str(store.root.parent)}
    outputs = {}
    for flag in ("--pipeline", "--no-pipeline"):
        out = tmp_path / f"{flag}.csv"
        done = subprocess.run([sys.executable, "-m", "app.cli", "run", "--source", "demo",
                               "--model", MODEL, "--max-frames", "20", "--device", "cpu",
                               "--threads", "1", "--out", str(out), flag],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
        assert done.returncode == 0, done.stderr
        mode = "pipelined" if flag == "--pipeline" else "sequential"
        assert f"x real time (source at 30 fps); {mode}" in done.stderr, done.stderr
        with out.open(newline="") as handle:
            reader = csv.DictReader(handle)
            outputs[flag] = [_repeatable(typed_row(r, reader.fieldnames)) for r in reader]
    assert len(outputs["--pipeline"]) == 20
    assert outputs["--pipeline"] == outputs["--no-pipeline"]


def test_run_rows_speed_reports_x_real_time_for_a_file_source(store):
    with RunRows.open("demo", model=MODEL, store=store, device="cpu", threads=1) as run:
        rows = list(run.frames(6))
        speed = run.speed()
    assert len(rows) == 6 and speed["frames"] == 6 and speed["source_fps"] == 30.0
    assert speed["fps"] > 0 and speed["x_real_time"] == pytest.approx(speed["fps"] / 30.0, rel=0.01)


# ---------------------------------------------------------------- the app's analysis worker
def _live(qtbot, store, pipelined_on: bool, tmp_path: Path, frames: int = 60):
    """Run the app's InferenceThread on demo frames put into its newest-frame slot faster than
    it analyses them, recording every analysed frame (the app's own Record); return (the
    demo frames, the recorded rows, the detector's threads, the slot)."""
    from app.ui.frame_slot import LatestFrameSlot
    from app.ui.inference import InferenceThread
    from app.ui.session_recorder import RecordingRequest

    demo = [f for _, f in zip(range(frames), open_source("demo"))]
    slot = LatestFrameSlot()
    worker = InferenceThread(slot, store, device="cpu", threads=1, expression_model=MODEL,
                             pipeline_options={"pipelined": pipelined_on})
    worker.start()
    try:
        qtbot.waitUntil(lambda: worker.pipeline is not None, timeout=120_000)
        noted: list[ThreadNotingDetector] = []

        def note() -> None:  # runs on the analysis thread, between two frames
            noted.append(ThreadNotingDetector(worker.pipeline.detector))
            worker.pipeline.detector = noted[0]

        worker.request(note)
        worker.start_recording(RecordingRequest(root=tmp_path / "sessions"))
        qtbot.waitUntil(lambda: worker.recording is not None and bool(noted), timeout=30_000)
        last = -1
        for frame in demo:  # a camera faster than the analysis: ~200 fps
            slot.put(frame)
            time.sleep(0.005)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and last < demo[-1].index:
            update = worker.take_update()
            if update is not None:
                last = update.result.frame.index
            time.sleep(0.01)
    finally:
        worker.stop()
        worker.wait(30_000)
    (session,) = (tmp_path / "sessions").iterdir()
    with (session / "frames.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [typed_row(r, reader.fieldnames) for r in reader]
    return demo, rows, noted[0].threads, slot


@pytest.mark.parametrize("pipelined_on", [True, False], ids=["pipelined", "sequential"])
def test_the_app_worker_keeps_newest_frame_only_with_the_sequential_results(
        qtbot, store, pipelined_on, tmp_path):
    """Newest frame only (frames nobody took are dropped, not queued), in order, and every
    analysed frame's row is what `pipeline.process` gives on the same frames one after
    another: labels, smoothed labels, probabilities, boxes, points, track ids."""
    from app.pipeline.smoothing import ExpressionSmoother
    from app.session_rows import expression_classes

    demo, rows, threads, slot = _live(qtbot, store, pipelined_on, tmp_path)
    analysed = [r["frame"] for r in rows]
    assert analysed and analysed[-1] == 59, "the newest frame is always analysed in the end"
    assert analysed == sorted(set(analysed)), "in order, never a frame twice"
    assert slot.dropped > 0 and len(analysed) < 60, "frames nobody took are dropped, not queued"
    if pipelined_on:
        on_worker = sum(t.startswith(WORKER) for t in threads)
        assert on_worker >= len(threads) - 1 > 0, "the app detects ahead by default"
    else:
        assert threads and not any(t.startswith(WORKER) for t in threads)
    replay = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL)
    schema, smoother = SessionSchema(expression_classes(store)), ExpressionSmoother()
    expected = [row for i in analysed
                for row in schema.rows(smoother.update(replay.process(demo[i])), MODEL)]
    assert {r["label"] for r in rows} - {None}, "the demo face is classified"
    assert [_repeatable(r) for r in rows] == \
        [_repeatable(typed_row(r, schema.columns)) for r in expected]


def test_the_bench_times_the_executor_users_run(store):
    """`occlufer bench` goes through the same executor (pipelined unless --no-pipeline) and
    says which one it timed; both see the same faces on the same frames."""
    from app.bench import bench_pipeline

    frames = load_frames("demo", 8, faces=4)
    pipeline = build_pipeline(store, device="cpu", threads=1, expression_model=MODEL)
    detector = ThreadNotingDetector(pipeline.detector)
    pipeline.detector = detector
    reports = {}
    for mode in (True, False):
        pipeline.reset()
        detector.threads.clear()
        reports[mode] = bench_pipeline(pipeline, frames, runs=8, warmup=1, pipelined=mode)
        on_worker = sum(t.startswith(WORKER) for t in detector.threads)
        assert on_worker == (8 if mode else 0), detector.threads
    assert reports[True]["pipelined"] and not reports[False]["pipelined"]
    assert reports[True]["faces_per_frame"] == reports[False]["faces_per_frame"] == 4.0
    assert set(reports[True]["stage_ms"]) == set(reports[False]["stage_ms"])
    for report in reports.values():  # 8 results, 7 gaps between them
        assert 0 < report["interval_ms"]["p50"] <= report["interval_ms"]["p99"]


def test_every_command_of_the_bench_matrix_is_one_the_cli_takes(tmp_path):
    """The matrix the lead runs on an idle machine: 1/4/8 faces x exact/following x
    pipelined/sequential bench rows plus the two `occlufer run` rows, all valid commands."""
    from app.bench_matrix import bench_rows, run_rows
    from app.cli import build_parser

    rows = bench_rows(300, "1", 300) + run_rows(tmp_path / "clip.avi", tmp_path, "1")
    parsed = [build_parser().parse_args(argv) for _, argv in rows]
    benches = [a for a in parsed if a.command == "bench"]
    assert sorted({a.faces for a in benches}) == [1, 4, 8]
    assert {(a.detect_every, a.pipelined) for a in benches} == {(1, True), (1, False),
                                                                (5, True), (5, False)}
    assert all(a.agreement == 300 for a in benches if a.detect_every == 5 and a.pipelined)
    assert {a.threads for a in benches} == {1, None}
    litert = [a for a in benches if a.landmarks == "facemesh_468_tflite"]
    assert len(litert) == 6 and all(a.agreement == 300 for a in litert)
    assert [a.pipelined for a in parsed if a.command == "run"] == [True, False]


class FailingSource:
    """Five demo frames, then the source fails (a camera unplugged, a file cut short)."""

    fps = None

    def __init__(self) -> None:
        self.demo = open_source("demo")

    def __iter__(self):
        for frame in self.demo:
            if frame.index == 5:
                raise SourceError("camera:0 stopped delivering frames (unplugged?)")
            yield frame

    def close(self) -> None:
        self.demo.close()


@pytest.mark.parametrize("ahead", [True, False], ids=["pipelined", "sequential"])
def test_a_failing_source_still_gives_every_frame_before_the_failure(store, ahead):
    pipeline = build_pipeline(store, device="cpu", threads=1, landmark_model=None,
                              occlusion_model=None, student_model=None)
    run = RunRows(source=FailingSource(), pipeline=pipeline, schema=SessionSchema(),
                  model=None, read_ahead=2, pipelined=ahead)
    seen = []
    with pytest.raises(SourceError, match="unplugged"):
        for rows in run.frames():
            seen.append(rows[0]["frame"])
    assert seen == [0, 1, 2, 3, 4]
