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
from app.pipeline.executor import pipelined, sequential
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
    results = [pipeline.process(f) for f in frames]
    reference = [_faces(r) for r in results]
    assert {len(r) for r in reference} >= {0, 4}
    detected = ["detect" in r.latency_ms for r in results]
    assert detected[7] and detected[18] and not detected[6] and not detected[19]
    assert not set(detector.threads) - {threading.current_thread().name}
    pipeline.reset()
    pipeline.tracker = IouTracker()  # reset() keeps counting ids up; start at 1 again
    detector.threads.clear()
    got = [_faces(pipeline.process(p.frame, p.detection)) for p in pipelined(frames, pipeline)]
    assert got == reference
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
    # 3 consumed, <= 1 pulled and detected ahead, `depth` queued, 1 held by the blocked reader
    assert stalled <= 3 + int(ahead) + depth + 1
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
def _live(qtbot, store, pipelined_on: bool, frames: int = 60):
    """Run the app's InferenceThread on demo frames put into its newest-frame slot faster than
    it analyses them; return (analysed frame indices in order, the detector's threads, slot)."""
    from app.ui.frame_slot import LatestFrameSlot
    from app.ui.inference import InferenceThread

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
        qtbot.waitUntil(lambda: bool(noted), timeout=30_000)
        analysed: list[int] = []
        for frame in demo:  # a camera faster than the analysis: ~200 fps
            slot.put(frame)
            time.sleep(0.005)
            update = worker.take_update()
            if update is not None:
                analysed.append(update.result.frame.index)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not analysed or analysed[-1] < demo[-1].index):
            update = worker.take_update()
            if update is not None:
                analysed.append(update.result.frame.index)
                if update.result.faces:
                    assert update.result.faces[0].label is not None
            time.sleep(0.01)
    finally:
        worker.stop()
        worker.wait(30_000)
    return analysed, noted[0].threads, slot


@pytest.mark.parametrize("pipelined_on", [True, False], ids=["pipelined", "sequential"])
def test_the_app_worker_keeps_newest_frame_only(qtbot, store, pipelined_on):
    analysed, threads, slot = _live(qtbot, store, pipelined_on)
    assert analysed and analysed[-1] == 59, "the newest frame is always analysed in the end"
    assert analysed == sorted(set(analysed)), "in order, never a frame twice"
    assert slot.dropped > 0 and len(analysed) < 60, "frames nobody took are dropped, not queued"
    if pipelined_on:
        on_worker = sum(t.startswith(WORKER) for t in threads)
        assert on_worker >= len(threads) - 1 > 0, "the app detects ahead by default"
    else:
        assert threads and not any(t.startswith(WORKER) for t in threads)
