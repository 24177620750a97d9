"""The classifier exporter: ONNX `probs` and in-graph `cam` match torch on real FERPlus faces,
the file describes itself, fp16 storage halves it and still runs, nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from torch import nn

from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.providers import create_session
from exporters import classifier as exporter
from models import create_model
from training.data.classes import EMOTIONS8

SPEC = InputSpec(size=48)


@pytest.fixture(scope="module")
def faces(ferplus_root: Path) -> list[np.ndarray]:
    files = sorted((ferplus_root / "FER2013Test").glob("*.png"))[:48]
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


@pytest.fixture(scope="module")
def model(faces) -> nn.Module:
    """A narrow ResNet-18 (6x6 final map) with a few SGD steps on real faces, so BatchNorm
    statistics, residual branches and class weights are all non-trivial."""
    torch.manual_seed(0)
    net = create_model("resnet18", num_classes=8, small_input=True, width=16)
    x = torch.from_numpy(prepare_batch(faces, SPEC))
    y = torch.arange(len(faces)) % 8
    optimizer = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    return net.eval()


@pytest.fixture(scope="module")
def exported(model, faces, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "net.onnx"
    path = exporter.export_classifier(model, SPEC, EMOTIONS8, out, model_name="resnet18",
                                      verify_images=faces)
    assert path == out
    return out


def reference(model: nn.Module, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """probs and CAM computed here, independently of the exporter's wrapper."""
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        probs = torch.softmax(model(tensor), dim=1).numpy()
        features = model.forward_features(tensor).numpy()
    weight = model.classifier.weight.detach().numpy()
    cam = np.maximum(np.einsum("ck,nkhw->nchw", weight, features), 0.0)
    cam = cam / (cam.max(axis=(2, 3), keepdims=True) + 1e-6)
    return probs, cam


def test_probs_and_cam_match_torch_on_real_faces(model, exported, faces):
    session = create_session(exported, "cpu")
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["probs", "cam"]
    x = prepare_batch(faces, SPEC)
    probs, cam = session.run(["probs", "cam"], {"input": x})
    expected_probs, expected_cam = reference(model, x)
    assert probs.shape == (48, 8) and cam.shape == (48, 8, 6, 6)
    assert np.abs(probs - expected_probs).max() < 1e-4
    assert np.abs(cam - expected_cam).max() < 1e-4
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
    peaks = cam.max(axis=(2, 3))
    assert np.all((np.abs(peaks - 1.0) < 1e-3) | (peaks == 0.0))  # each class map scaled by its max
    # the batch axis is dynamic
    one, _ = session.run(["probs", "cam"], {"input": x[:1]})
    five, _ = session.run(["probs", "cam"], {"input": x[:5]})
    assert one.shape == (1, 8) and five.shape == (5, 8)
    assert np.abs(five - probs[:5]).max() < 1e-5


def test_metadata_describes_the_model(exported, model):
    meta = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert json.loads(meta["classes"]) == list(EMOTIONS8)
    assert InputSpec.from_manifest(json.loads(meta["input"])) == SPEC
    assert meta["model_name"] == "resnet18"
    assert meta["source_sha256"] == exporter.state_dict_sha256(model)
    assert "cam" in json.loads(meta["outputs"])
    report = json.loads(exported.with_name(exported.name + ".export.json").read_text())
    assert report["max_abs_diff_probs"] < 1e-4 and report["max_abs_diff_cam"] < 1e-4
    assert report["sha256"] == exporter.sha256_file(exported)


def test_fp16_file_is_half_the_size_loads_and_agrees(model, exported, faces, tmp_path):
    labels = np.arange(len(faces)) % 8
    report = exporter.export_classifier_report(model, SPEC, EMOTIONS8, tmp_path / "half.onnx",
                                               fp16=True, verify_images=faces,
                                               verify_labels=labels)
    half = Path(report.path)
    assert half.stat().st_size < 0.6 * exported.stat().st_size
    graph = onnx.load(str(half)).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    session = create_session(half, "cpu")
    x = prepare_batch(faces, SPEC)
    probs, cam = session.run(["probs", "cam"], {"input": x})
    expected_probs, _ = reference(model, x)
    assert probs.dtype == np.float32 and cam.shape == (48, 8, 6, 6)
    assert np.abs(probs - expected_probs).max() < 5e-3
    assert report.top1_agreement >= 0.95
    assert report.accuracy_torch is not None and report.accuracy_onnx is not None
    assert abs(report.accuracy_torch - report.accuracy_onnx) <= 5.0


def test_a_failed_parity_check_leaves_nothing_behind(model, faces, tmp_path, monkeypatch):
    monkeypatch.setattr(exporter, "PARITY_TOLERANCE", 0.0)
    out = tmp_path / "rejected.onnx"
    with pytest.raises(exporter.ExportParityError):
        exporter.export_classifier(model, SPEC, EMOTIONS8, out, verify_images=faces[:4])
    assert list(tmp_path.iterdir()) == []


def test_cam_parity_skips_only_maps_without_evidence_of_their_own(model, faces, tmp_path,
                                                                 monkeypatch):
    """Maps under 1 % of the face's strongest are rescaled rounding, not evidence; every other
    map is still held to the CAM limit (1e-12 here, so real fp32 differences fail the export)."""
    peaks = np.array([[1.0, 0.5, 0.009, 0.0], [2e-3, 1e-3, 1e-5, 0.0]])
    assert exporter.cam_maps_with_evidence(peaks).tolist() == [[True, True, False, False]] * 2
    monkeypatch.setattr(exporter, "CAM_PARITY_TOLERANCE", 1e-12)
    with pytest.raises(exporter.ExportParityError, match="cam by"):
        exporter.export_classifier(model, SPEC, EMOTIONS8, tmp_path / "x.onnx",
                                   verify_images=faces)
    assert not (tmp_path / "x.onnx").exists()


def test_networks_without_the_contract_are_refused(tmp_path, faces):
    class NoClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.classifier = nn.Conv2d(3, 8, 1)

    with pytest.raises(TypeError, match="classifier"):
        exporter.ProbsAndCam(NoClassifier())
    with pytest.raises(ValueError, match="class names"):
        exporter.export_classifier(create_model("resnet18", num_classes=7, width=8), SPEC,
                                   EMOTIONS8, tmp_path / "x.onnx", verify_images=faces[:2])
