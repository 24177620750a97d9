"""One CSV schema for `occlufer run` and the app: columns, rows, and `occlufer run --model`."""

from __future__ import annotations

import csv
import json
from datetime import datetime

import numpy as np
import pytest

from app.cli import main
from app.pipeline.records import Face, FaceAnalysis, FaceRegion, Frame, FrameResult
from app.pipeline.smoothing import ExpressionSmoother
from app.session_rows import (DETECTION_COLUMNS, LATENCY_STAGES, SessionSchema, class_column,
                              expression_classes, session_metadata)
from tests.app_support import FERPLUS_CLASSES, SEVEN_CLASSES, make_store, sha256


@pytest.fixture(scope="module")
def store(tmp_path_factory, model_store, retinaface_onnx, ferplus_root):
    return make_store(tmp_path_factory.mktemp("manifest"), model_store.root, ferplus_root)


def _analysis(track: int, probs, classes, **fields) -> FaceAnalysis:
    face = Face(box=np.array([10, 20, 110, 140], np.float32), score=0.98,
                landmarks5=np.arange(10, dtype=np.float32).reshape(5, 2), track_id=track)
    return FaceAnalysis(face=face, probs=np.asarray(probs, np.float32), classes=classes, **fields)


def test_columns_keep_the_old_run_columns_and_add_expression_and_occlusion():
    schema = SessionSchema(("neutral", "Happiness!"))
    columns = schema.columns
    assert columns[: len(DETECTION_COLUMNS)] == DETECTION_COLUMNS
    assert columns[-len(LATENCY_STAGES):] == [f"{s}_ms" for s in LATENCY_STAGES]
    for name in ("model", "label", "confidence", "smoothed_label", "p_neutral", "p_happiness",
                 "occlusion_ratio", "visible_regions", "detect_ms", "expression_ms", "frame_ms"):
        assert name in columns
    assert class_column("Happiness!") == "p_happiness"


def test_class_union_over_every_expression_model(store):
    union = expression_classes(store)
    assert set(union) == set(FERPLUS_CLASSES) | set(SEVEN_CLASSES) and len(union) == 8
    assert expression_classes(store, ["resnet18_tiny7"]) == SEVEN_CLASSES


def test_rows_per_face_and_one_row_for_an_empty_frame():
    schema = SessionSchema(FERPLUS_CLASSES)
    latency = {"detect": 12.345, "track": 0.1, "align": 0.5, "expression": 1.0, "frame": 14.0,
               "a_stage_the_schema_does_not_know": 3.0}
    empty = schema.rows(FrameResult(Frame(np.zeros((4, 4, 3), np.uint8), 5, 1.7e9, 0.2), [], latency), None)
    assert len(empty) == 1 and empty[0]["faces"] == 0 and empty[0]["detect_ms"] == "12.35"
    assert set(empty[0]) <= set(schema.columns)

    seven = _analysis(4, [0.05, 0.05, 0.1, 0.6, 0.1, 0.05, 0.05], SEVEN_CLASSES,
                      occlusion=np.r_[np.zeros(30), np.ones(10)].reshape(4, 10).astype(np.float32),
                      regions=[FaceRegion("eyes", np.zeros(4), 0.9), FaceRegion("mouth", np.zeros(4), 0.2)])
    ExpressionSmoother().update(FrameResult(Frame(np.zeros((4, 4, 3), np.uint8), 6, 0.0), [seven]))
    rows = schema.rows(FrameResult(Frame(np.zeros((4, 4, 3), np.uint8), 6, 1.7e9), [seven], latency), "m7")
    row = rows[0]
    assert set(row) <= set(schema.columns)
    assert row["track_id"] == 4 and row["model"] == "m7" and row["label"] == "happiness"
    assert row["confidence"] == "0.6000" and row["smoothed_label"] == "happiness"
    assert row["p_happiness"] == "0.6000" and "p_contempt" not in row  # this model has no contempt
    assert row["occlusion_ratio"] == "0.2500" and row["visible_regions"] == "eyes"
    datetime.fromisoformat(row["timestamp"])


def test_metadata_names_models_with_their_sha256(store, retinaface_onnx):
    schema = SessionSchema(expression_classes(store))
    meta = session_metadata(store=store, models=["retinaface_mnet025", "resnet18_fast"],
                            providers={"retinaface_mnet025": "CPU", "resnet18_fast": "CPU"},
                            device="cpu", source={"spec": "demo"}, started=1.7e9, schema=schema,
                            files={"csv": "frames.csv"})
    assert meta["models"]["resnet18_fast"]["sha256"] == sha256(store.location("resnet18_fast"))
    assert meta["models"]["retinaface_mnet025"]["sha256"] == sha256(retinaface_onnx)
    assert meta["columns"] == schema.columns and meta["app_version"]
    json.dumps(meta)


def test_occlufer_run_with_a_model_writes_the_shared_schema(store, tmp_path, monkeypatch):
    monkeypatch.setenv("OCCLUFER_MANIFEST", str(store.manifest_path))
    out = tmp_path / "demo.csv"
    code = main(["run", "--source", "demo", "--max-frames", "12", "--out", str(out), "--model",
                 "resnet18_tiny7", "--device", "cpu", "--threads", "2", "--store", str(store.root)])
    assert code == 0
    with out.open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
    assert reader.fieldnames == SessionSchema(SEVEN_CLASSES).columns
    assert sorted({int(r["frame"]) for r in rows}) == list(range(12))
    faced = [r for r in rows if r["faces"] != "0"]
    assert len(faced) >= 10, "the demo face is found in almost every frame"
    for row in faced:
        total = sum(float(row[class_column(c)]) for c in SEVEN_CLASSES)
        assert total == pytest.approx(1.0, abs=2e-3)
        assert row["model"] == "resnet18_tiny7" and row["smoothed_label"] in SEVEN_CLASSES
        assert float(row["expression_ms"]) > 0
