"""The trainer end to end on 300 real FERPlus faces: a run killed after epoch 1 and resumed
ends bit-identical to one that never stopped; the result is exported, evaluated (clean and
occluded), carded and registered in a temporary manifest, and `occlufer eval` finds it."""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import cv2
import onnx
import pytest
import torch

from app import REPO_ROOT
from app.errors import OccluferError
from training import cli
from training.occlusion import write_test_sets
from training.recipes import get_recipe
from training.trainer import train

LIMIT = 300
RECIPE = replace(get_recipe("resnet18", "fast"), epochs=2, batch_size=32,
                 model_cfg={"small_input": True, "stem_stride": 2, "width": 8})
SETTINGS = dict(limit=LIMIT, val_limit=300, test_limit=300, workers=0, progress=False, seed=3)


@pytest.fixture(scope="module")
def occlusion_dir(ferplus_root: Path, tmp_path_factory) -> Path:
    """A 'masked' occluded test set over the first 40 FERPlus test faces (the full set takes
    minutes to draw; the trainer only needs one set to exist)."""
    base = tmp_path_factory.mktemp("occ")
    mini = base / "mini" / "FER2013Test"
    mini.mkdir(parents=True)
    with open(ferplus_root / "FER2013Test" / "label.csv", newline="") as handle:
        rows = [row for row in csv.reader(handle) if row][:40]
    with open(mini / "label.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    for row in rows:
        shutil.copyfile(ferplus_root / "FER2013Test" / row[0], mini / row[0])
    write_test_sets(mini.parent, base / "sets", ["masked"], progress=False)
    return base / "sets"


@pytest.fixture(scope="module")
def runs(ferplus_root: Path, occlusion_dir: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    manifest = root / "assets" / "manifest.json"
    manifest.parent.mkdir()
    manifest.write_text(json.dumps({"models": {"someone_elses": {"task": "detection"}}}))
    resumed, straight = root / "resumed", root / "straight"
    common = dict(manifest=manifest, occlusion_dir=occlusion_dir, **SETTINGS)
    first = train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=resumed,
                  stop_after=1, **common)  # as if killed after epoch 1
    assert first == resumed / "last.pt"
    after_kill = torch.load(first, weights_only=False)
    onnx_path = train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=resumed,
                      resume=True, **common)
    train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=straight, finalize=False,
          **common)
    return {"resumed": resumed, "straight": straight, "onnx": onnx_path, "manifest": manifest,
            "after_kill": after_kill}


def test_a_killed_run_resumes_at_epoch_two_and_matches_an_uninterrupted_one(runs):
    assert runs["after_kill"]["epoch"] == 1 and runs["after_kill"]["state"]["epoch"] == 1
    resumed = torch.load(runs["resumed"] / "last.pt", weights_only=False)
    straight = torch.load(runs["straight"] / "last.pt", weights_only=False)
    assert resumed["epoch"] == straight["epoch"] == 2
    for key, tensor in straight["model"].items():
        assert torch.equal(resumed["model"][key], tensor), key
    assert torch.equal(resumed["rng"]["torch"], straight["rng"]["torch"])
    assert resumed["scheduler"]["last_epoch"] == straight["scheduler"]["last_epoch"]
    rows = [r for r in csv.DictReader((runs["resumed"] / "metrics.csv").open())]
    same = [r for r in csv.DictReader((runs["straight"] / "metrics.csv").open())]
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in same]
    assert [r["val_acc"] for r in rows] == [r["val_acc"] for r in same]


def test_export_evaluation_card_and_manifest(runs):
    out, onnx_path = runs["resumed"], runs["onnx"]
    assert onnx_path == out / "resnet18_fast.onnx" and onnx_path.is_file()
    meta = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert meta["model_name"] == "resnet18" and json.loads(meta["input"])["size"] == 48
    for kind in ("test_clean", "test_masked"):
        report = json.loads((out / "reports" / kind / "report.json").read_text())
        assert report["n"] > 0 and 0.0 <= report["accuracy"] <= 100.0
        assert cv2.imread(str(out / "reports" / kind / "confusion_matrix.png")) is not None
    assert report["occlusion"] == "masked"
    card = (out / "resnet18_fast.md").read_text()
    for needle in ("git commit", "ferplus", f"{LIMIT} training images", "Hardware", "Wall time",
                   "Licence", "FERPlus test (clean)", "synthetic masked", "occlufer train"):
        assert needle in card, needle
    manifest = json.loads(runs["manifest"].read_text())
    assert "someone_elses" in manifest["models"]  # other entries survive
    entry = manifest["models"]["resnet18_fast"]
    assets = runs["manifest"].parent
    assert entry["task"] == "expression" and entry["sources"] == [{"kind": "asset"}]
    assert (assets / entry["file"]).is_file() and (assets / entry["card"]).is_file()
    from exporters.classifier import sha256_file
    assert entry["sha256"] == sha256_file(assets / entry["file"])
    assert entry["outputs"] == ["probs", "cam"] and len(entry["classes"]) == 8
    assert entry["input"]["size"] == 48 and entry["input"]["layout"] == "NCHW"


def test_a_run_trained_elsewhere_publishes_into_another_store_as_train_would(runs, tmp_path):
    """`python -m training.publish`: how a run from a clean worktree (`--no-register`) lands in
    the repository's store: the same entry, file and card as the trainer's own registration."""
    from training.publish import RunIncompleteError, main, publish_run

    manifest = tmp_path / "assets" / "manifest.json"
    assert main([str(runs["resumed"]), "--manifest", str(manifest)]) == 0
    ours = json.loads(manifest.read_text())["models"]["resnet18_fast"]
    trainers = json.loads(runs["manifest"].read_text())["models"]["resnet18_fast"]
    assert ours == trainers
    for key in ("file", "card"):
        assert (manifest.parent / ours[key]).read_bytes() == \
            (runs["manifest"].parent / trainers[key]).read_bytes()
    with pytest.raises(RunIncompleteError, match="not been exported"):
        publish_run(runs["straight"], manifest=manifest)  # trained, never finalised
    with pytest.raises(RunIncompleteError, match="not a training run"):
        publish_run(tmp_path, manifest=manifest)
    assert main([str(runs["straight"]), "--manifest", str(manifest)]) == 2


def test_occlufer_eval_resolves_a_model_name_through_the_manifest(runs, ferplus_root, tmp_path):
    parser = argparse.ArgumentParser()
    cli.add_eval_args(parser)
    args = parser.parse_args(["--model", "resnet18_fast", "--dataset", "ferplus", "--root",
                              str(ferplus_root), "--report", str(tmp_path),
                              "--manifest", str(runs["manifest"])])
    assert cli.resolve_model_file("resnet18_fast", runs["manifest"]) == \
        runs["manifest"].parent / "models" / "resnet18_fast.onnx"
    assert cli.run_eval(args) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["n"] == 3137  # the standard FERPlus test/majority split


def test_resume_refuses_other_settings_and_a_new_run_refuses_an_old_folder(runs, ferplus_root):
    with pytest.raises(OccluferError, match="different settings"):
        train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=runs["straight"],
              resume=True, **{**SETTINGS, "seed": 4})
    with pytest.raises(OccluferError, match="--resume"):
        train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=runs["straight"],
              **SETTINGS)


def test_train_cli_options_map_onto_train(monkeypatch, tmp_path):
    seen = {}

    def fake_train(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return tmp_path / "x.onnx"

    monkeypatch.setattr("training.trainer.train", fake_train)
    parser = argparse.ArgumentParser()
    cli.add_train_args(parser)
    argv = ["--model", "resnet18", "--data-root", "/data", "--recipe", "paper", "--epochs", "3",
            "--resume", "--no-occlusion-aug", "--limit", "50", "--out", str(tmp_path)]
    monkeypatch.setattr("sys.argv", ["occlufer", "train", *argv])
    args = parser.parse_args(argv)
    assert cli.run_train(args) == 0
    # the card's command makes the file from nothing: the resume is the card's Code line
    assert seen["kwargs"]["command"] == "occlufer train " + " ".join(
        a for a in argv if a != "--resume")
    assert seen["args"] == ("resnet18", "ferplus", Path("/data"), "paper", "cpu")
    kwargs = seen["kwargs"]
    assert (kwargs["epochs"], kwargs["resume"], kwargs["occlusion_aug"], kwargs["limit"]) == \
        (3, True, False, 50)


def test_a_real_sigkill_mid_run_resumes_to_the_same_weights(runs, ferplus_root, occlusion_dir,
                                                            tmp_path):
    """Kill the training process for real (SIGKILL, no cleanup) once epoch 1 is saved."""
    out = tmp_path / "killed"
    code = (  # the same torch thread count as this process: CPU sums depend on the split
        f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
        "import sys; from pathlib import Path; from dataclasses import replace\n"
        "from training.recipes import get_recipe; from training.trainer import train\n"
        f"r = replace(get_recipe('resnet18', 'fast'), epochs=2, batch_size=32, "
        f"model_cfg={RECIPE.model_cfg!r})\n"
        f"train('resnet18', 'ferplus', Path({str(ferplus_root)!r}), r, 'cpu', "
        f"out_dir=Path({str(out)!r}), finalize=False, limit={LIMIT}, val_limit=300, "
        f"workers=0, progress=False, seed=3)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "last.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, "epoch 1 never finished"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list(out.glob("*.part"))  # atomic writes leave no half-written checkpoint
    train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=out, resume=True,
          finalize=False, occlusion_dir=occlusion_dir, **SETTINGS)
    resumed = torch.load(out / "last.pt", weights_only=False)
    straight = torch.load(runs["straight"] / "last.pt", weights_only=False)
    assert resumed["epoch"] == 2
    assert all(torch.equal(resumed["model"][k], t) for k, t in straight["model"].items())
