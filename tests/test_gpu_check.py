"""`occlufer gpu-check --device cpu`: the GPU acceptance run's every step, on the CPU (dry run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from app import REPO_ROOT
from app.bench import load_frames
from app.cli import main
from app.gpu_check import PROBS_TOLERANCE, parity, training_step
from app.pipeline.pipeline import build_pipeline
from tests.app_support import install_facemesh


def test_cpu_dry_run_records_providers_parity_fps_and_training(retinaface_onnx, model_store,
                                                              ferplus_root, tmp_path, capsys):
    install_facemesh(model_store)  # the landmark stage too, where [convert] is installed
    out = tmp_path / "gpu-check.json"
    code = main(["gpu-check", "--device", "cpu", "--json", str(out), "--store",
                 str(model_store.root), "--frames", "8", "--warmup", "2", "--faces", "1", "4",
                 "--parity-frames", "3", "--threads", "1", "--train-recipe", "fast",
                 "--train-limit", "64", "--train-workers", "0", "--data-root", str(ferplus_root)])
    report = json.loads(out.read_text())
    assert code == 0 and report["passed"], capsys.readouterr().out
    assert report["dry_run"] and report["command"].startswith("occlufer gpu-check --device cpu")
    models = report["providers"]["models"]
    assert {"retinaface_mnet025", "resnet18_fast"} <= set(models)
    assert set(models.values()) == {"CPU"} and report["providers"]["all_on_device"]
    p = report["parity"]
    assert p["faces_compared"] >= 3 and p["face_count_mismatch"] == 0
    assert p["max_abs_diff"]["probs"] <= PROBS_TOLERANCE and p["max_abs_diff"]["cam"] is not None
    for faces in ("1", "4"):  # the tiled demo really holds that many faces for the detector
        row = report["bench"][faces]
        assert row["fps"] > 0 and row["frame_ms_p95"] >= row["frame_ms_p50"] > 0
        assert row["faces_per_frame"] >= 0.9 * int(faces)
    assert report["targets"]["fps_1_faces_min"]["met"] is None  # targets are for the GPU run
    assert "skipped" in report["cuda_options"]
    half = report["fp16"]
    if "skipped" not in half:  # onnx installed: the expression model really ran converted
        row = half["resnet18_fast"]
        assert row["ms_fp16"] > 0 and row["ms_fp32"] > 0 and row["max_abs_diff"]["probs"] < 1e-2
    training = report["training"]
    assert training["images"] == 64 and training["img_per_s"] > 0 and training["device"] == "cpu"
    assert report["cuda"]["loads"] or report["cuda"]["reason"]
    assert "PASSED" in capsys.readouterr().out


def test_parity_fails_when_the_outputs_really_differ(retinaface_onnx, model_store):
    """Two different expression models on the same frames: the check must say so."""
    frames = load_frames("demo", 2)
    a = build_pipeline(model_store, "cpu", 1, expression_model="resnet18_fast",
                       landmark_model=None, occlusion_model=None, student_model=None)
    b = build_pipeline(model_store, "cpu", 1, expression_model="resnet18_fast_noocc",
                       landmark_model=None, occlusion_model=None, student_model=None)
    result = parity(a, b, frames)
    assert result["faces_compared"] == 2 and not result["passed"]
    assert result["max_abs_diff"]["probs"] > PROBS_TOLERANCE
    assert result["max_abs_diff"]["box"] == 0.0  # same detector, same boxes


def test_training_step_without_data_or_torch_is_skipped_with_the_reason(tmp_path, retinaface_onnx):
    assert "no FERPlus training data" in training_step("cpu", tmp_path, "fast", 8, 0, 60)["skipped"]
    # a runtime-only install (torch unimportable): the other steps run, training says why, and
    # nothing in gpu-check imports torch
    code = (
        "import sys, json\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "from app.cli import main\n"
        f"rc = main(['gpu-check', '--device', 'cpu', '--json', {str(tmp_path / 'r.json')!r}, "
        "'--frames', '2', '--warmup', '1', '--faces', '1', '--parity-frames', '1'])\n"
        f"report = json.load(open({str(tmp_path / 'r.json')!r}))\n"
        "assert rc == 0, report\n"
        "assert report['training']['skipped'].startswith('torch not installed'), report['training']\n"
        "assert sys.modules['torch'] is None\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT,
                          env={**os.environ, "OCCLUFER_HOME": str(retinaface_onnx.parent.parent)},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
