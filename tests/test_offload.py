"""`training.offload`: a run trained where neither ../shared nor the shipped models are (a lent
GPU) must see the same faces, the same teacher targets, and come back as a run this machine
finishes into the same kind of card. Real FERPlus faces, a real (tiny) training run, real
checkpoints and a real ONNX teacher."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from app.errors import OccluferError
from training.data.loading import load_split
from training.offload import PART_BYTES, join, pack, plan_epochs, slim, unpack
from training.recipes import get_recipe
from training.trainer import train

RECIPE = replace(get_recipe("resnet18", "fast"), epochs=2, batch_size=32,
                 model_cfg={"small_input": True, "stem_stride": 2, "width": 8})


def _mini_ferplus(ferplus_root: Path, out: Path, rows: int = 120) -> Path:
    """The first `rows` faces of train and valid in the official layout."""
    for folder in ("FER2013Train", "FER2013Valid"):
        (out / folder).mkdir(parents=True)
        with open(ferplus_root / folder / "label.csv", newline="") as handle:
            kept = [row for row in csv.reader(handle) if row][:rows]
        with open(out / folder / "label.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(kept)
        for row in kept:
            shutil.copyfile(ferplus_root / folder / row[0], out / folder / row[0])
    return out


def test_pack_then_unpack_gives_back_the_same_faces_votes_and_names(ferplus_root, tmp_path):
    original = _mini_ferplus(ferplus_root, tmp_path / "orig")
    packed = pack(original, tmp_path / "pack")
    copy = tmp_path / "copy"
    assert unpack(packed, copy) == 240
    for split, folder in (("train", "FER2013Train"), ("valid", "FER2013Valid")):
        assert (copy / folder / "label.csv").read_bytes() == \
            (original / folder / "label.csv").read_bytes()
        a = load_split("ferplus", original, split, "crossentropy")
        b = load_split("ferplus", copy, split, "crossentropy")
        assert list(a.names) == list(b.names) and len(a.names) > 50
        assert np.array_equal(a.images, b.images)  # lossless: teacher cache keys match
        assert np.array_equal(a.soft_labels, b.soft_labels)


def test_pack_refuses_a_face_that_is_not_a_48px_gray_png(ferplus_root, tmp_path):
    original = _mini_ferplus(ferplus_root, tmp_path / "orig", rows=5)
    name = next((original / "FER2013Valid").glob("*.png"))
    import cv2

    cv2.imwrite(str(name), np.zeros((48, 48, 3), np.uint8))
    with pytest.raises(OccluferError, match="48x48 8-bit gray"):
        pack(original, tmp_path / "pack")


def test_a_run_brought_back_in_parts_finishes_here_with_the_gpu_session_in_its_card(
        ferplus_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCLUFER_CODE_VERSION", "0123abc")  # what the lease's copy was
    settings = dict(limit=200, val_limit=200, test_limit=200, workers=0, progress=False, seed=1,
                    manifest=tmp_path / "manifest.json", occlusion_dir=tmp_path / "no_sets")
    (tmp_path / "manifest.json").write_text(json.dumps({"models": {}}))
    remote_run, here = tmp_path / "remote", tmp_path / "here"
    gpu_command = "occlufer train --model resnet18 --device cuda --no-finalize"
    train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=remote_run,
          finalize=False, command=gpu_command, **settings)
    parts = slim(remote_run, tmp_path / "parts")
    assert parts and all(p.stat().st_size <= PART_BYTES for p in parts)
    join(tmp_path / "parts", here)
    for name in ("best.pt", "last.pt"):
        original = torch.load(remote_run / name, weights_only=False)
        joined = torch.load(here / name, weights_only=False)
        assert joined["epoch"] == original["epoch"]
        for key, tensor in original["model"].items():
            back = joined["model"][key]
            assert back.dtype == tensor.dtype, key
            assert torch.allclose(back.float(), tensor.float(), rtol=1e-3, atol=1e-4), key
    last = torch.load(here / "last.pt", weights_only=False)
    assert last["optimizer"]["state"] == {} and last["state"]["epoch"] == 2
    assert last["state"]["sessions"][0]["commit"] == "0123abc"
    assert last["state"]["sessions"][0]["command"] == gpu_command
    last["state"]["sessions"][0]["hardware"] = "a lent GPU machine"  # as the lease records it
    torch.save(last, here / "last.pt")

    onnx_path = train("resnet18", "ferplus", ferplus_root, RECIPE, "cpu", out_dir=here,
                      resume=True, register=False, command="occlufer train --resume here",
                      **settings)
    card = (here / "resnet18_fast.md").read_text()
    assert onnx_path.is_file()
    assert f"- Command: `{gpu_command}`" in card
    assert "trained on a lent GPU machine; exported and evaluated on" in card
    assert "from epoch 1 at git commit 0123abc" in card
    assert "Epochs: 2 of 2" in card


def test_a_teacher_that_is_not_installed_is_used_through_its_cached_targets(ferplus_root,
                                                                            tmp_path):
    from app.pipeline.preprocess import InputSpec
    from exporters.classifier import sha256_file
    from tests.app_support import export_resnet18
    from training.distill import teacher_targets
    from training.data.classes import EMOTIONS8

    spec = InputSpec(size=48, color="gray").to_manifest()
    assets = tmp_path / "assets"
    teacher = export_resnet18(assets / "models" / "teacher.onnx", ferplus_root,
                              classes=EMOTIONS8, spec=spec)
    manifest = assets / "manifest.json"
    manifest.write_text(json.dumps({"models": {"teacher": {
        "task": "expression", "file": "models/teacher.onnx", "sha256": sha256_file(teacher),
        "sources": [{"kind": "asset"}]}}}))
    split = load_split("ferplus", ferplus_root, "train", "crossentropy")
    images, names = split.images[:32], list(split.names[:32])
    computed, _ = teacher_targets(["teacher"], images, names, EMOTIONS8, manifest,
                                  progress=False, cache=tmp_path / "cache")
    teacher.unlink()  # the lent machine: manifest and cached targets, no model file
    cached, note = teacher_targets(["teacher"], images, names, EMOTIONS8, manifest,
                                   progress=False, cache=tmp_path / "cache")
    assert np.array_equal(cached, computed) and "teacher" in note
    with pytest.raises(OccluferError, match="not installed here.*not cached"):
        teacher_targets(["teacher"], images, names, EMOTIONS8, manifest, progress=False,
                        cache=tmp_path / "empty")


def test_the_lease_plans_only_the_epochs_that_fit():
    assert plan_epochs(25045, 5000.0, 300.0, 3.0, 60) == 37  # 8.0 s an epoch
    assert plan_epochs(25045, 50000.0, 900.0, 3.0, 60) == 60  # never more than the recipe
    assert plan_epochs(25045, 100.0, 200.0, 3.0, 60) == 0
