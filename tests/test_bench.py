"""The benchmark harness (`occlufer bench`): real models, real frames, a real JSON report.

Speed itself is never asserted (it lives in BENCHMARKS.md); these tests check that the harness
measures what it says: every stage the pipeline ran, the faces it was asked to tile, the
providers and sha256s of the models, and the RSS curve of a soak.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from app import REPO_ROOT
from app.bench import agreement, bench_pipeline, load_frames, machine_info, tile_faces
from app.pipeline.detector import RetinaFaceDetector
from app.pipeline.pipeline import FacePipeline
from app.runtime.providers import create_session


@pytest.fixture(scope="module")
def detector(retinaface_onnx) -> RetinaFaceDetector:
    return RetinaFaceDetector(create_session(retinaface_onnx, "cpu", 1))


@pytest.mark.parametrize("faces", [1, 4])
def test_tiling_gives_the_detector_that_many_real_faces(detector, faces):
    frame = load_frames("demo", 1)[0].image
    tiled = tile_faces(frame, faces)
    assert tiled.shape == frame.shape
    assert len(detector(tiled)) == faces


def test_the_report_covers_every_stage_and_the_soak_curve(detector):
    pipeline = FacePipeline(detector=detector)
    frames = load_frames("demo", 6, faces=4)
    report = bench_pipeline(pipeline, frames, runs=12, warmup=2, rss_every=4)
    assert report["frames"] == 12 and report["bad_frames"] == 0
    assert report["faces_per_frame"] == 4.0
    assert set(report["stage_ms"]) == {"detect", "track", "align", "expression"}
    for stats in [report["frame_ms"], *report["stage_ms"].values()]:
        assert 0 <= stats["p50"] <= stats["p95"] <= stats["p99"]
    assert report["frame_ms"]["p50"] >= report["stage_ms"]["detect"]["p50"]
    assert [i for i, _, _ in report["rss_curve"]] == [0, 4, 8]
    assert all(mb > 10 for _, _, mb in report["rss_curve"])
    assert report["fps"] > 0
    assert machine_info()["logical_cores"] >= 1


def test_agreement_is_exact_against_itself_and_measures_a_smaller_detector(retinaface_onnx):
    frames = load_frames("demo", 4, faces=2)
    session = create_session(retinaface_onnx, "cpu", 1)
    reference = FacePipeline(detector=RetinaFaceDetector(session))
    same = agreement(FacePipeline(detector=RetinaFaceDetector(session)), reference, frames)
    assert same["reference_faces"] == 8 and same["missed"] == same["extra"] == 0
    assert same["box_iou"]["p5"] == 1.0 and same["landmarks5_error_iod"]["p50"] == 0.0
    assert same["detector_share"] == 1.0 and same["label_agreement"] is None  # no classifier
    small = agreement(FacePipeline(detector=RetinaFaceDetector(session, max_side=320)),
                      FacePipeline(detector=RetinaFaceDetector(session)), frames)
    assert small["missed"] == 0 and 0.6 < small["box_iou"]["p50"] < 1.0
    assert small["landmarks5_error_iod"]["p50"] > 0


def test_occlufer_bench_writes_its_json(retinaface_onnx, tmp_path):
    """The command as a user runs it: without --model it classifies with the manifest's
    default (best shipped) expression model."""
    out = tmp_path / "bench.json"
    env = {"OCCLUFER_HOME": str(retinaface_onnx.parent.parent), "PATH": ""}
    done = subprocess.run([sys.executable, "-m", "app.cli", "bench", "--frames", "5",
                           "--warmup", "1", "--faces", "2", "--device", "cpu", "--threads", "1",
                           "--json", str(out)], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    report = json.loads(out.read_text())
    assert report["command"].startswith("occlufer bench --frames 5")
    assert report["faces_per_frame"] == 2.0
    from app.runtime.store import ModelStore

    default = ModelStore().default_expression_model()
    assert default is not None
    assert report["models"][default]["provider"] == "CPU"
    assert len(report["models"]["retinaface_mnet025"]["sha256"]) == 64
    assert "expression" in report["stage_ms"]
    assert "fps" in done.stdout and np.isfinite(report["fps"])


def test_soak_verdict_tells_a_leak_from_a_flat_run(tmp_path):
    """`app.soak`'s judgement on known curves, and its CSV reader on a real session file
    layout (one latency per frame, whatever the number of faces)."""
    from app.soak import frame_latencies, judge

    times = np.arange(100, dtype=float)
    latency = np.full(1000, 12.0)
    flat = judge(times, np.r_[np.linspace(20, 150, 10), np.full(90, 150.0)], latency)
    assert flat["rss_flat_within_5_percent"] and flat["latency_flat_within_10_percent"]
    leak = judge(times, np.linspace(150, 180, 100), np.linspace(10, 14, 1000))
    assert not leak["rss_flat_within_5_percent"] and not leak["latency_flat_within_10_percent"]
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("frame,face,frame_ms\n0,0,10.5\n0,1,10.5\n1,0,11.0\n2,,9.0\n")
    assert frame_latencies(csv_path).tolist() == [10.5, 11.0, 9.0]


def test_app_soak_runs_the_real_window_offscreen_and_reads_its_recording(tmp_path, model_store,
                                                                         retinaface_onnx):
    """`python -m app.soak --app`: the desktop app (offscreen) records the demo for a few
    seconds of video, then the soak reads the recording it made and draws the curves."""
    import json
    import os
    import subprocess
    import sys

    from app import REPO_ROOT

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen",
           "OCCLUFER_HOME": str(model_store.root.parent)}
    done = subprocess.run([sys.executable, "-m", "app.soak", "--app", "--video-minutes", "0.1",
                           "--every", "0.5", "--out", str(tmp_path)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 2), done.stderr[-2000:]  # 2: a few seconds is not flat
    report = json.loads((tmp_path / "soak.json").read_text())
    assert report["frames_analysed"] > 0 and report["csv"].endswith("frames.csv")
    assert (tmp_path / "soak.png").stat().st_size > 10_000
    assert len(report["rss_curve"]) >= 3 and report["rss_mb_max"] > 100  # models loaded
