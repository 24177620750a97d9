"""Synthetic occlusion on real FERPlus faces: every kind, at 48 px and upscaled to 192 px,
through the same code paths training and the test-set writer use."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from app import REPO_ROOT
from app.pipeline.alignment import FERPLUS_LANDMARKS5
from training.data import ferplus
from training.occlusion import (CLEAN, KINDS, TEST_SET_KINDS, contact_sheet, image_rng, main,
                                random_occlusion, synthesize, write_test_sets)

N_FACES = 8


@pytest.fixture(scope="module")
def test_names(ferplus_root: Path) -> list[str]:
    names, _ = ferplus.read_votes(ferplus_root, "test")
    return names


@pytest.fixture(scope="module")
def faces48(ferplus_root: Path, test_names: list[str]) -> list[np.ndarray]:
    """Real FERPlus test faces, 48x48 gray, spread over the split."""
    picks = test_names[:: len(test_names) // N_FACES][:N_FACES]
    faces = [cv2.imread(str(ferplus_root / "FER2013Test" / n), cv2.IMREAD_UNCHANGED) for n in picks]
    assert all(f is not None and f.shape == (48, 48) for f in faces)
    return faces


@pytest.fixture(scope="module")
def face192(faces48: list[np.ndarray]) -> np.ndarray:
    """One face upscaled to 192 px BGR, the app's crop size range."""
    return cv2.cvtColor(cv2.resize(faces48[0], (192, 192), interpolation=cv2.INTER_CUBIC),
                        cv2.COLOR_GRAY2BGR)


def template(size: int) -> np.ndarray:
    """The mean FERPlus 5 points in a size-px crop (pixel u * size - 0.5)."""
    return np.asarray(FERPLUS_LANDMARKS5, np.float64) * size - 0.5


def at(mask: np.ndarray, point: np.ndarray) -> float:
    x, y = np.rint(point).astype(int)
    return float(mask[y, x])


def check_local(image: np.ndarray, out: np.ndarray, mask: np.ndarray) -> None:
    """Shape/dtype kept; pixels change only under the mask, and by no more than the mask's
    share of a full swing (anti-aliased edges change a little, hidden pixels fully)."""
    assert out.shape == image.shape and out.dtype == np.uint8
    assert mask.shape == image.shape[:2] and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    diff = np.abs(out.astype(np.int16) - image.astype(np.int16))
    diff = diff.max(axis=2) if diff.ndim == 3 else diff
    assert not diff[mask == 0].any(), "a pixel outside the mask changed"
    assert (diff <= np.ceil(mask * 255 * 1.5) + 1).all(), "a faint mask edge changed a pixel a lot"
    hidden = mask > 0.5  # clear eyeglasses at 48 px: only their thin frames pass 0.5
    assert hidden.sum() > 10, "the occluder hides almost nothing"
    assert diff[hidden].mean() > 3, "the occluder is invisible where it claims to hide the face"


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_changes_only_masked_pixels(kind: str, faces48, face192) -> None:
    for i, face in enumerate(faces48):
        out, mask = synthesize(face, kind, np.random.default_rng(i))
        check_local(face, out, mask)
    out, mask = synthesize(face192, kind, np.random.default_rng(7), template(192))
    check_local(face192, out, mask)


def test_masks_cover_nose_and_mouth_not_eyes(faces48, face192) -> None:
    for size, faces in ((48, faces48), (192, [face192])):
        points = template(size)
        for i, face in enumerate(faces * (12 // len(faces))):
            _, mask = synthesize(face, "masked", np.random.default_rng(100 + i), points)
            assert min(at(mask, p) for p in points[2:]) > 0.9, "nose or mouth left visible"
            assert max(at(mask, p) for p in points[:2]) < 0.05, "a face mask covers an eye"
            assert 0.2 < mask.mean() < 0.5


def test_sunglasses_cover_both_eyes_not_mouth(faces48, face192) -> None:
    dark = 0
    samples = 0
    for size, faces in ((48, faces48), (192, [face192])):
        points = template(size)
        for i, face in enumerate(faces * (16 // len(faces))):
            _, mask = synthesize(face, "sunglasses", np.random.default_rng(200 + i), points)
            eyes = [at(mask, p) for p in points[:2]]
            assert min(eyes) > 0.1, "an eye is not behind a lens"
            dark += min(eyes) > 0.9
            samples += 1
            assert max(at(mask, p) for p in points[2:]) < 0.05, "glasses reach the nose or mouth"
            assert 0.03 < mask.mean() < 0.3
    assert dark >= 0.7 * samples, "the sunglasses set should be mostly dark lenses"


@pytest.mark.parametrize("kind", ["objects", "hands"])
def test_objects_and_hands_hide_a_share_of_the_face(kind: str, faces48) -> None:
    from app.occlusion.face import FaceFrame

    points = template(48)
    oval = FaceFrame.from_landmarks(points).oval((48, 48))
    shares = []
    for i in range(24):
        face = faces48[i % len(faces48)]
        _, mask = synthesize(face, kind, np.random.default_rng(300 + i), points)
        shares.append(float((mask * oval).sum() / oval.sum()))
    shares = np.array(shares)
    assert shares.min() > 0.07 and shares.max() < 0.55, shares.round(2)
    assert 0.2 < shares.mean() < 0.4, shares.round(2)
    assert shares.std() > 0.05, "sizes should vary"


@pytest.mark.parametrize("size", [48, 192])
def test_blocks_hide_their_half(size: int, faces48) -> None:
    face = cv2.resize(faces48[1], (size, size), interpolation=cv2.INTER_CUBIC)
    rows = {k: synthesize(face, k, np.random.default_rng(5), template(size))[1]
            for k in ("block_upper", "block_lower", "block_left", "block_right")}
    cut = lambda f: int(f * size)  # noqa: E731
    assert (rows["block_upper"][: cut(0.45)] > 0.99).all()
    assert (rows["block_upper"][cut(0.7):] == 0).all()
    assert (rows["block_lower"][cut(0.65):] > 0.99).all()
    assert (rows["block_lower"][: cut(0.45)] == 0).all()
    assert (rows["block_left"][:, : cut(0.42)] > 0.99).all()
    assert (rows["block_left"][:, cut(0.58):] == 0).all()
    assert (rows["block_right"][:, cut(0.58):] > 0.99).all()
    assert (rows["block_right"][:, : cut(0.42)] == 0).all()


def test_occluders_follow_the_landmarks(face192) -> None:
    """A small face in the image's lower right: the mask lands on it and nowhere else."""
    points = template(192) * 0.45 + 96
    _, mask = synthesize(face192, "masked", np.random.default_rng(0), points)
    assert min(at(mask, p) for p in points[2:]) > 0.9
    assert not mask[:90].any() and not mask[:, :90].any()
    _, mask = synthesize(face192, "sunglasses", np.random.default_rng(0), points)
    assert min(at(mask, p) for p in points[:2]) > 0.1
    assert not mask[:, :90].any()
    # a rolled head: the half-face block turns with it
    angle = np.deg2rad(20)
    c, s = np.cos(angle), np.sin(angle)
    rolled = (template(192) - 96) @ np.array([[c, s], [-s, c]]) + 96
    _, mask = synthesize(face192, "block_upper", np.random.default_rng(0), rolled)
    assert at(mask, rolled[0]) == 1.0 and at(mask, rolled[1]) == 1.0
    assert at(mask, rolled[3]) == 0.0 and at(mask, rolled[4]) == 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_bytes_other_seed_differs(kind: str, faces48) -> None:
    face = faces48[2]
    a, ma = synthesize(face, kind, np.random.default_rng(11))
    b, mb = synthesize(face, kind, np.random.default_rng(11))
    assert a.tobytes() == b.tobytes() and ma.tobytes() == mb.tobytes()
    c, mc = synthesize(face, kind, np.random.default_rng(12))
    assert a.tobytes() != c.tobytes() or ma.tobytes() != mc.tobytes()


def test_image_rng_depends_only_on_seed_kind_and_name() -> None:
    draw = lambda *key: image_rng(*key).integers(1 << 62, size=4).tolist()  # noqa: E731
    assert draw(0, "masked", "fer0032220.png") == draw(0, "masked", "fer0032220.png")
    assert draw(0, "masked", "fer0032220.png") != draw(1, "masked", "fer0032220.png")
    assert draw(0, "masked", "fer0032220.png") != draw(0, "masked", "fer0032222.png")
    assert draw(0, "masked", "fer0032220.png") != draw(0, "hands", "fer0032220.png")


@pytest.mark.parametrize("kind", KINDS)
def test_gray_and_bgr_give_the_same_occlusion(kind: str, faces48) -> None:
    gray = faces48[3]
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    out_g, mask_g = synthesize(gray, kind, np.random.default_rng(21))
    out_c, mask_c = synthesize(bgr, kind, np.random.default_rng(21))
    assert out_g.shape == (48, 48) and out_c.shape == (48, 48, 3)
    np.testing.assert_array_equal(mask_g, mask_c)
    luma = cv2.cvtColor(out_c, cv2.COLOR_BGR2GRAY).astype(int)
    assert np.abs(luma - out_g.astype(int)).max() <= 2


def test_masked_faces_are_coloured_on_bgr_input(face192) -> None:
    """Colour input gets colour occluders (the gray path is not the only one exercised)."""
    colourful = 0
    for i in range(6):
        out, mask = synthesize(face192, "masked", np.random.default_rng(400 + i), template(192))
        hidden = out[mask > 0.99].astype(int)
        colourful += (hidden.max(axis=1) - hidden.min(axis=1)).mean() > 8
    assert colourful >= 2


def test_random_occlusion(faces48) -> None:
    face = faces48[4]
    out, mask, kind = random_occlusion(face, np.random.default_rng(0), p_clean=1.0)
    assert kind == CLEAN and not mask.any() and np.array_equal(out, face) and out is not face
    seen = set()
    for i in range(60):
        out, mask, kind = random_occlusion(face, np.random.default_rng(i), kinds=TEST_SET_KINDS,
                                           p_clean=0.2)
        seen.add(kind)
        assert kind in TEST_SET_KINDS + (CLEAN,)
        assert mask.any() == (kind != CLEAN)
    assert seen == set(TEST_SET_KINDS) | {CLEAN}


def test_bad_inputs_are_refused(faces48) -> None:
    face = faces48[0]
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="kind"):
        synthesize(face, "scarf", rng)
    with pytest.raises(ValueError, match="uint8"):
        synthesize(face.astype(np.float32), "masked", rng)
    with pytest.raises(ValueError, match="shape"):
        synthesize(face[..., None].repeat(4, axis=2), "masked", rng)
    with pytest.raises(ValueError, match="landmarks5"):
        synthesize(face, "masked", rng, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="p_clean"):
        random_occlusion(face, rng, p_clean=1.5)


@pytest.fixture(scope="module")
def small_ferplus(tmp_path_factory, ferplus_root: Path) -> Path:
    """A FERPlus root whose test split holds the first 20 real test images and their rows."""
    root = tmp_path_factory.mktemp("ferplus20")
    split = root / "FER2013Test"
    split.mkdir()
    with (ferplus_root / "FER2013Test" / "label.csv").open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row][:20]
    with (split / "label.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    for row in rows:
        (split / row[0]).write_bytes((ferplus_root / "FER2013Test" / row[0]).read_bytes())
    return root


def test_write_test_sets_layout(small_ferplus: Path, tmp_path: Path) -> None:
    written = write_test_sets(small_ferplus, tmp_path / "sets", progress=False)
    assert set(written) == set(TEST_SET_KINDS)
    source = small_ferplus / "FER2013Test"
    names = sorted(p.name for p in source.glob("*.png"))
    for kind, root in written.items():
        assert root == tmp_path / "sets" / kind
        split = root / "FER2013Test"
        assert sorted(p.name for p in split.glob("*.png")) == names
        assert (split / "label.csv").read_bytes() == (source / "label.csv").read_bytes()
        for name in names:
            image = cv2.imread(str(split / name), cv2.IMREAD_UNCHANGED)
            original = cv2.imread(str(source / name), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(root / "masks" / name), cv2.IMREAD_UNCHANGED)
            assert image.shape == original.shape == mask.shape == (48, 48)
            assert mask.dtype == np.uint8 and mask.max() > 200
            untouched = mask == 0
            assert np.abs(image.astype(int) - original)[untouched].max(initial=0) <= 1
        sheet = cv2.imread(str(root / "contact_sheet.png"))
        assert sheet is not None and sheet.shape == (2 * 98 + 2, 12 * 98 + 2, 3)
        # the ordinary FERPlus reader loads the occluded set with the original labels
        occluded = ferplus.index(root, "test", "majority")
        clean = ferplus.index(small_ferplus, "test", "majority")
        assert occluded.names == clean.names and np.array_equal(occluded.labels, clean.labels)


def test_write_test_sets_is_reproducible(small_ferplus: Path, tmp_path: Path) -> None:
    a = write_test_sets(small_ferplus, tmp_path / "a", kinds=["hands"], seed=3, progress=False)
    b = write_test_sets(small_ferplus, tmp_path / "b", kinds=["hands"], seed=3, progress=False)
    c = write_test_sets(small_ferplus, tmp_path / "c", kinds=["hands"], seed=4, progress=False)
    files = sorted(p.relative_to(a["hands"]) for p in a["hands"].rglob("*.png"))
    assert len(files) == 41  # 20 images, 20 masks, the contact sheet
    same = [(a["hands"] / f).read_bytes() == (b["hands"] / f).read_bytes() for f in files]
    assert all(same)
    assert any((a["hands"] / f).read_bytes() != (c["hands"] / f).read_bytes() for f in files)


def test_cli(small_ferplus: Path, tmp_path: Path, capsys) -> None:
    assert main(["--data-root", str(small_ferplus), "--out", str(tmp_path / "o"),
                 "--kinds", "block_left", "sunglasses", "--seed", "1"]) == 0
    assert (tmp_path / "o" / "block_left" / "contact_sheet.png").is_file()
    assert (tmp_path / "o" / "sunglasses" / "FER2013Test" / "label.csv").is_file()
    assert not (tmp_path / "o" / "masked").exists()
    assert main(["--data-root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]) != 0
    assert "FER2013Test" in capsys.readouterr().err  # the error shows the expected layout


def test_module_entry_point(small_ferplus: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "training.occlusion", "--data-root", str(small_ferplus),
         "--out", str(tmp_path), "--kinds", "masked"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "masked" / "masks").glob("*.png"))) == 20


def test_contact_sheet_draws_mask_outlines(faces48, face192, tmp_path: Path) -> None:
    images, masks = [], []
    for i, face in enumerate(faces48[:3] + [face192]):
        out, mask = synthesize(face, "objects", np.random.default_rng(i))
        images.append(out)
        masks.append(mask)
    path = contact_sheet(images, masks, tmp_path / "sheet.png", cols=2)
    sheet = cv2.imread(str(path))
    assert sheet.shape == (2 * 194 + 2, 2 * 194 + 2, 3)  # 192 px tiles (48 px ones upscaled 4x)
    red = (sheet[..., 2] > 200) & (sheet[..., 1] < 60) & (sheet[..., 0] < 60)
    assert red.sum() > 100
    plain = cv2.imread(str(contact_sheet(images, None, tmp_path / "plain.png", cols=2)))
    assert plain.shape == sheet.shape
