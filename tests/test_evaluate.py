"""training/evaluate.py: the ONNX scored through the app's preprocessing; its accuracy,
F1 and confusion are checked against numbers computed here from the raw ONNX outputs."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from app import REPO_ROOT
from app.pipeline.preprocess import InputSpec, prepare_batch
from exporters.classifier import export_classifier, sha256_file
from models import create_model
from training import evaluate as ev
from training.data import EMOTIONS7, EMOTIONS8, load_split
from tests.app_support import mini_ferplus

SPEC = InputSpec(size=48)
N = 300


@pytest.fixture(scope="module")
def tiny_onnx(ferplus_root: Path, tmp_path_factory) -> Path:
    """A narrow ResNet-18 fitted for a few steps on real FERPlus train faces, so it predicts
    several classes (an untrained net answers one class for everything)."""
    train = load_split("ferplus", ferplus_root, "train", progress=False)
    torch.manual_seed(0)
    net = create_model("resnet18", small_input=True, stem_stride=2, width=8)
    x = torch.from_numpy(prepare_batch(list(train.images[:512]), SPEC))
    y = torch.from_numpy(train.labels[:512])
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net.train()
    for _ in range(15):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    out = tmp_path_factory.mktemp("eval") / "tiny.onnx"
    return export_classifier(net.eval(), SPEC, EMOTIONS8, out, model_name="tiny",
                             verify_images=list(train.images[:16]))


def test_accuracy_and_confusion_match_the_raw_onnx_outputs(tiny_onnx, ferplus_root, tmp_path):
    report = ev.evaluate(tiny_onnx, "ferplus", ferplus_root, "test", report_dir=tmp_path,
                         limit=N)
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    session = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probs"], {"input": prepare_batch(list(test.images[:N]), SPEC)})
    pred, true = probs.argmax(1), test.labels[:N]
    assert len(set(pred.tolist())) > 1
    assert report["n"] == N
    assert report["accuracy"] == pytest.approx(np.mean(pred == true) * 100.0, abs=1e-9)
    confusion = np.array(report["confusion"])
    assert confusion.sum() == N and np.trace(confusion) == int(np.sum(pred == true))
    for c, name in enumerate(EMOTIONS8):
        support = int(np.sum(true == c))
        expected = np.mean(pred[true == c] == c) * 100.0 if support else None
        assert report["per_class_accuracy"][name] == pytest.approx(expected)
    assert report["model_sha256"] == sha256_file(tiny_onnx)
    assert (report["dataset"], report["split"], report["occlusion"]) == ("ferplus", "test", "none")
    assert report["classes"] == list(EMOTIONS8)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["accuracy"] == report["accuracy"]
    image = cv2.imread(str(tmp_path / "confusion_matrix.png"))
    assert image is not None and image.shape[0] > 200 and image.shape[1] > 200


def test_macro_f1_follows_the_usual_definition():
    true = np.array([0, 0, 0, 1, 1, 2])
    pred = np.array([0, 0, 1, 1, 2, 2])
    metrics = ev.classification_metrics(true, pred, 3, 3)
    # per class F1: 2*2/(3+2)=0.8, 2*1/(2+2)=0.5, 2*1/(1+2)=0.667 (scikit-learn agrees)
    assert metrics["macro_f1"] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3 * 100)
    assert metrics["accuracy"] == pytest.approx(4 / 6 * 100)
    assert metrics["per_class_recall"] == pytest.approx([200 / 3, 50.0, 100.0])


def test_folder_dataset_with_seven_classes_against_an_eight_class_model(tiny_onnx, ferplus_root,
                                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("OCCLUFER_CACHE", str(tmp_path / "cache"))
    test = load_split("ferplus", ferplus_root, "test", progress=False)
    root = tmp_path / "faces"
    written = 0
    for i, (image, label) in enumerate(zip(test.images, test.labels)):
        if label == 7 or written >= 70:
            continue
        folder = root / ("happy" if label == 1 else EMOTIONS8[label])
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{i:05d}.png"), image)
        written += 1
    report = ev.evaluate(tiny_onnx, "folder", root, report_dir=tmp_path / "report")
    assert report["n"] == 70 and report["classes"] == list(EMOTIONS7)
    assert report["confusion_columns"][:7] == list(EMOTIONS7)
    assert (tmp_path / "report" / "confusion_matrix.png").is_file()


def test_occluded_set_is_built_once_then_reused(tiny_onnx, ferplus_root, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCLUFER_CACHE", str(tmp_path / "cache"))
    root = mini_ferplus(ferplus_root, tmp_path / "mini", 60)
    occlusion_dir = tmp_path / "sets"
    clean = ev.evaluate(tiny_onnx, "ferplus", root, report_dir=tmp_path / "clean")
    masked = ev.evaluate(tiny_onnx, "ferplus", root, occlusion="masked",
                         occlusion_dir=occlusion_dir, report_dir=tmp_path / "masked")
    built = occlusion_dir / "masked" / "FER2013Test"
    assert len(list(built.glob("*.png"))) == 60
    assert masked["occlusion"] == "masked" and masked["n"] == clean["n"]
    stamp = (built / "label.csv").stat().st_mtime_ns
    again = ev.evaluate(tiny_onnx, "ferplus", root, occlusion="masked",
                        occlusion_dir=occlusion_dir, report_dir=tmp_path / "masked2")
    assert (built / "label.csv").stat().st_mtime_ns == stamp
    assert again["accuracy"] == masked["accuracy"]
    # reports list the sets that exist, in the order asked, without building the others
    assert ev.available_test_sets(root, ["hands", "masked", "blur"], occlusion_dir) == ["masked"]
    assert not (occlusion_dir / "hands").exists()
    # a set whose build was cut short is not trusted
    next(built.glob("*.png")).unlink()
    assert not ev.occluded_set_ready(occlusion_dir / "masked", "FER2013Test")
    assert ev.available_test_sets(root, ["masked"], occlusion_dir) == []
    assert ev.available_test_sets(root, ["masked"], occlusion_dir, build=True) == ["masked"]
    assert ev.occluded_set_ready(occlusion_dir / "masked", "FER2013Test")


def test_models_without_occlufer_metadata_are_refused(tmp_path, ferplus_root):
    torch.manual_seed(0)
    plain = tmp_path / "plain.onnx"
    net = create_model("resnet18", small_input=True, stem_stride=2, width=8).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(net, (torch.zeros(1, 3, 48, 48),), str(plain), dynamo=False,
                          input_names=["input"], output_names=["probs"])
    with pytest.raises(ev.OccluferError, match="metadata"):
        ev.evaluate(plain, "ferplus", ferplus_root, report_dir=tmp_path / "r")


def test_evaluation_never_imports_torch():
    code = ("import sys, training.evaluate, training.cli; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT).returncode == 0
