"""`training.foreign_shifts`: the held-out image changes do what they say on real FERPlus
faces, are fixed by their seed, and are scored through real ONNX sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.errors import OccluferError
from training.data import load_split
from training.foreign_shifts import SHIFTS, markdown_table, score, shifted

MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "resnet18_fast.onnx"


@pytest.fixture(scope="module")
def faces(ferplus_root: Path) -> np.ndarray:
    return load_split("ferplus", ferplus_root, "test", "majority", progress=False).images[:40]


def test_each_shift_does_what_it_says(faces):
    out = {name: shifted(faces, name) for name in SHIFTS}
    for name, images in out.items():
        assert images.shape == faces.shape and images.dtype == np.uint8, name
        assert not np.array_equal(images, faces), name
        np.testing.assert_array_equal(images, shifted(faces, name))  # fixed by its seed
    assert out["haze"].std() < 0.6 * faces.std()  # contrast squeezed
    assert len(np.unique(out["posterize"])) <= 8  # 3-bit grey levels
    blocks = out["pixelate"][0]
    assert len(np.unique(blocks)) <= 22 * 22 and len(np.unique(blocks)) < len(np.unique(faces[0]))
    impulses = (out["impulse"] != faces) & np.isin(out["impulse"], (0, 255))
    assert 0.02 < impulses.mean() < 0.06
    assert out["washout"].mean() > faces.mean() + 20  # mid-tones lifted
    # the rotation is outside the training warps (±10°): the face's centre of mass moves
    assert np.abs(out["tilt"].astype(int) - faces).mean() > 10
    with pytest.raises(OccluferError, match="unknown shift"):
        shifted(faces, "fog")


def test_score_reports_every_shift_through_the_real_model(ferplus_root):
    results = score([MODEL], ferplus_root, ["haze", "tilt"], limit=64)
    row = results["resnet18_fast"]
    assert set(row) == {"clean", "haze", "tilt"}
    assert all(0.0 <= row[s]["accuracy"] <= 100.0 for s in row)
    assert "| `resnet18_fast` |" in markdown_table(results)
