"""Dataset readers: real FERPlus from ../shared, every other format as a tiny fixture in its
real on-disk layout (written here, with real FERPlus faces as the pixels)."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from app.errors import DatasetError
from training.data import EMOTIONS7, EMOTIONS8, LabeledImages, dataset_names, load_split
from training.data import affectnet, fer2013, ferplus, folder, rafdb, sfew
from training.data.ferplus import vote_distribution

# Counts produced by the microsoft/FERPlus reader rules (probability == crossentropy).
FERPLUS_COUNTS = {
    ("train", "majority"): 25045, ("train", "crossentropy"): 27947,
    ("train", "probability"): 27947, ("train", "multi_target"): 27667,
    ("valid", "majority"): 3191, ("valid", "crossentropy"): 3508,
    ("valid", "probability"): 3508, ("valid", "multi_target"): 3472,
    ("test", "majority"): 3137, ("test", "crossentropy"): 3507,
    ("test", "probability"): 3507, ("test", "multi_target"): 3466,
}


def load(dataset: str, root: Path, split: str, cache: Path, **kwargs) -> LabeledImages:
    return load_split(dataset, root, split, cache_dir=cache, progress=False, **kwargs)


@pytest.fixture(scope="session")
def faces(ferplus_root: Path) -> dict[str, list[np.ndarray]]:
    """Three real FERPlus test faces (48x48 gray) per emotion, keyed by EMOTIONS8 name."""
    index = ferplus.index(ferplus_root, "test", "majority")
    picked: dict[str, list[np.ndarray]] = {name: [] for name in EMOTIONS8}
    for source, label in zip(index.sources, index.labels):
        bucket = picked[EMOTIONS8[label]]
        if len(bucket) < 3:
            bucket.append(cv2.imread(str(source.path), cv2.IMREAD_GRAYSCALE))
    assert all(len(v) == 3 for v in picked.values())
    return picked


def write_image(path: Path, gray: np.ndarray, side: int | None = None) -> np.ndarray:
    """Write a face as a BGR file (upscaled to `side`); returns the BGR array written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if side:
        bgr = cv2.resize(bgr, (side, side), interpolation=cv2.INTER_LINEAR)
    assert cv2.imwrite(str(path), bgr, [cv2.IMWRITE_JPEG_QUALITY, 100])
    return bgr


def close(a: np.ndarray, b: np.ndarray, tolerance: float = 3.0) -> bool:
    """Equal up to JPEG loss: mean absolute difference in gray levels."""
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean()) < tolerance


# ---------------------------------------------------------------- FERPlus (real data)

def test_ferplus_test_majority_is_the_standard_3137(ferplus_root, tmp_path):
    data = load("ferplus", ferplus_root, "test", tmp_path)
    assert len(data) == 3137
    assert data.images.shape == (3137, 48, 48) and data.images.dtype == np.uint8
    assert data.labels.dtype == np.int64 and data.labels.min() >= 0 and data.labels.max() < 8
    assert data.soft_labels is None and data.classes == EMOTIONS8
    assert np.bincount(data.labels, minlength=8).tolist() == [1083, 892, 394, 382, 269, 16, 86, 15]
    first = cv2.imread(str(ferplus_root / "FER2013Test" / data.names[0]), cv2.IMREAD_GRAYSCALE)
    assert np.array_equal(data.images[0], first)


@pytest.mark.parametrize(("split", "mode"), sorted(FERPLUS_COUNTS))
def test_ferplus_counts_per_split_and_mode(ferplus_root, split, mode):
    index = ferplus.index(ferplus_root, split, mode)
    assert len(index.sources) == len(index.names) == FERPLUS_COUNTS[split, mode]
    assert index.labels.min() >= 0 and index.labels.max() < 8


@pytest.mark.parametrize("mode", ["crossentropy", "multi_target"])
def test_ferplus_soft_labels_are_distributions(ferplus_root, tmp_path, mode):
    data = load("ferplus", ferplus_root, "test", tmp_path, label_mode=mode)
    assert data.soft_labels.shape == (len(data), 8) and data.soft_labels.dtype == np.float32
    assert np.allclose(data.soft_labels.sum(axis=1), 1.0, atol=1e-6)
    assert (data.soft_labels >= 0).all()
    assert np.array_equal(np.argmax(data.soft_labels, axis=1), data.labels)


def test_ferplus_vote_rules():
    # neutral happiness surprise sadness anger disgust fear contempt unknown NF
    single_votes_dropped = np.array([6, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert np.allclose(vote_distribution(single_votes_dropped, "majority"), np.eye(8)[0])
    tie = np.array([5, 5, 0, 0, 0, 0, 0, 0, 0, 0])
    assert vote_distribution(tie, "majority") is None
    assert np.allclose(vote_distribution(tie, "crossentropy"), [0.5, 0.5, 0, 0, 0, 0, 0, 0])
    unknown_wins = np.array([2, 0, 0, 0, 0, 0, 0, 0, 8, 0])
    assert vote_distribution(unknown_wins, "majority") is None
    assert vote_distribution(unknown_wins, "crossentropy") is None
    not_a_face = np.array([0, 0, 0, 0, 0, 0, 0, 0, 0, 10])
    assert vote_distribution(not_a_face, "multi_target") is None
    # Emotions tied with unknown: unknown is removed and the walk stops; the emotions stay
    # when they still hold more than half of the votes, else the image is dropped.
    assert np.allclose(vote_distribution(np.array([3, 3, 0, 0, 0, 0, 0, 0, 3, 0]),
                                         "crossentropy"), [0.5, 0.5, 0, 0, 0, 0, 0, 0])
    assert vote_distribution(np.array([4, 0, 0, 0, 0, 0, 0, 0, 4, 2]), "crossentropy") is None
    # Multi-target keeps every emotion with >= 30 % of the votes.
    assert np.allclose(vote_distribution(np.array([4, 3, 3, 0, 0, 0, 0, 0, 0, 0]),
                                         "multi_target"), [0.4, 0.3, 0.3, 0, 0, 0, 0, 0])


def test_ferplus_cache_round_trip_is_equal_and_faster(ferplus_root, tmp_path):
    start = time.perf_counter()
    cold = load("ferplus", ferplus_root, "test", tmp_path, label_mode="crossentropy")
    cold_s = time.perf_counter() - start
    start = time.perf_counter()
    warm = load("ferplus", ferplus_root, "test", tmp_path, label_mode="crossentropy")
    warm_s = time.perf_counter() - start
    assert np.array_equal(cold.images, warm.images)
    assert np.array_equal(cold.labels, warm.labels) and warm.labels.dtype == np.int64
    assert np.array_equal(cold.soft_labels, warm.soft_labels)
    assert cold.names == warm.names and cold.classes == warm.classes
    assert warm_s < cold_s / 3, (cold_s, warm_s)
    assert [p.suffix for p in tmp_path.iterdir()] == [".npz"]  # no temp file left behind


def test_ferplus_size_and_color(tmp_path, faces):
    root = tmp_path / "ferplus"
    rows = []
    for i, face in enumerate(faces["happiness"] + faces["anger"]):
        name = f"fer{i:07d}.png"
        (root / "FER2013Valid").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "FER2013Valid" / name), face)
        votes = [0, 9, 0, 0, 1, 0, 0, 0, 0, 0] if i < 3 else [0, 0, 0, 0, 10, 0, 0, 0, 0, 0]
        rows.append([name, "(0, 0, 48, 48)", *votes])
    with (root / "FER2013Valid" / "label.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    data = load("ferplus", root, "val", tmp_path / "cache", size=64, color="bgr")
    assert data.images.shape == (6, 64, 64, 3)
    assert data.labels.tolist() == [1, 1, 1, 4, 4, 4]
    gray = load("ferplus", root, "valid", tmp_path / "cache")
    assert np.array_equal(gray.images[0], faces["happiness"][0])


# ---------------------------------------------------------------- RAF-DB

RAF_NUMBER = {"surprise": 1, "fear": 2, "disgust": 3, "happiness": 4, "sadness": 5, "anger": 6,
              "neutral": 7}


def write_rafdb(root: Path, faces) -> dict[str, tuple[str, np.ndarray]]:
    lines, written = [], {}
    for k, emotion in enumerate(EMOTIONS7):
        for j, face in enumerate(faces[emotion][:2]):
            name = f"{'train' if j == 0 else 'test'}_{k * 10 + j + 1:05d}.jpg"
            bgr = write_image(root / "Image" / "aligned" / name.replace(".jpg", "_aligned.jpg"),
                              face, side=100)
            lines.append(f"{name} {RAF_NUMBER[emotion]}")
            written[name] = (emotion, bgr)
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return written


def test_rafdb_reads_splits_and_maps_labels(tmp_path, faces):
    written = write_rafdb(tmp_path / "basic", faces)
    for split in ("train", "test"):
        data = load("rafdb", tmp_path / "basic", split, tmp_path / "cache")
        assert data.images.shape == (7, 100, 100, 3) and data.classes == EMOTIONS7
        assert all(name.startswith(split + "_") for name in data.names)
        for name, label, image in zip(data.names, data.labels, data.images):
            emotion, bgr = written[name]
            assert EMOTIONS7[label] == emotion
            assert close(image, bgr)


def test_cache_follows_label_file_changes(tmp_path, faces):
    root = tmp_path / "basic"
    write_rafdb(root, faces)
    first = load("rafdb", root, "train", tmp_path / "cache")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
    label_file.write_text(label_file.read_text().replace("train_00001.jpg 7", "train_00001.jpg 1"))
    os.utime(label_file, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = load("rafdb", root, "train", tmp_path / "cache")
    assert EMOTIONS7[first.labels[0]] == "neutral" and EMOTIONS7[second.labels[0]] == "surprise"
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_unreadable_cache_is_rebuilt(tmp_path, faces):
    write_rafdb(tmp_path / "basic", faces)
    good = load("rafdb", tmp_path / "basic", "test", tmp_path / "cache")
    (cached,) = (tmp_path / "cache").glob("*.npz")
    cached.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable dataset cache"):
        again = load("rafdb", tmp_path / "basic", "test", tmp_path / "cache")
    assert np.array_equal(good.images, again.images)


# ---------------------------------------------------------------- FER2013 csv

FER2013_NUMBER = {"anger": 0, "disgust": 1, "fear": 2, "happiness": 3, "sadness": 4,
                  "surprise": 5, "neutral": 6}


def test_fer2013_csv(tmp_path, faces):
    rows, expected = [], []
    for emotion in EMOTIONS7:
        for usage, face in zip(("Training", "PublicTest", "PrivateTest"), faces[emotion]):
            rows.append([FER2013_NUMBER[emotion], " ".join(map(str, face.ravel())), usage])
            expected.append((usage, emotion, face))
    (tmp_path / "fer").mkdir()
    with (tmp_path / "fer" / "fer2013.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    for split, usage in (("train", "Training"), ("valid", "PublicTest"), ("test", "PrivateTest")):
        data = load("fer2013", tmp_path / "fer", split, tmp_path / "cache")
        want = [(i, e, f) for i, (u, e, f) in enumerate(expected) if u == usage]
        assert data.images.shape == (7, 48, 48) and data.classes == EMOTIONS7
        assert data.names == [f"fer{i:07d}.png" for i, _, _ in want]
        assert [EMOTIONS7[k] for k in data.labels] == [e for _, e, _ in want]
        assert all(np.array_equal(img, f) for img, (_, _, f) in zip(data.images, want))


# ---------------------------------------------------------------- AffectNet csv

AFFECTNET_NUMBER = {"neutral": 0, "happiness": 1, "sadness": 2, "surprise": 3, "fear": 4,
                    "disgust": 5, "anger": 6, "contempt": 7}


def write_affectnet(root: Path, faces, header_in_validation: bool) -> dict[str, tuple]:
    """Faces pasted at an offset into larger photos; boxes in the csv point at them."""
    written = {}
    landmarks = ";".join(f"{v:.2f}" for v in np.linspace(10, 90, 136))
    for csv_name, with_header, slot in (("training.csv", True, 0),
                                        ("validation.csv", header_in_validation, 1)):
        rows = []
        for k, emotion in enumerate(EMOTIONS8):
            face = cv2.resize(faces[emotion][slot], (96, 96), interpolation=cv2.INTER_LINEAR)
            canvas = np.full((160, 200), 30, np.uint8)
            canvas[40:136, 70:166] = face
            name = f"{100 + k}/{csv_name[:5]}{k:02d}abc.jpg"
            write_image(root / "Manually_Annotated_Images" / name, canvas)
            rows.append([name, 70, 40, 96, 96, landmarks, AFFECTNET_NUMBER[emotion], 0.5, -0.2])
            written[name] = (emotion, face)
        rows.append(["999/uncertain.jpg", 0, 0, 10, 10, landmarks, 9, -2, -2])  # dropped
        rows.append(["999/noface.jpg", 0, 0, 10, 10, landmarks, 10, -2, -2])  # dropped
        with (root / csv_name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            if with_header:
                writer.writerow(affectnet.COLUMNS)
            writer.writerows(rows)
    return written


@pytest.mark.parametrize("header_in_validation", [True, False])
def test_affectnet_crops_face_boxes(tmp_path, faces, header_in_validation):
    root = tmp_path / "affectnet"
    written = write_affectnet(root, faces, header_in_validation)
    for split in ("train", "valid", "test"):
        data = load("affectnet", root, split, tmp_path / "cache", size=96, color="gray")
        assert data.images.shape == (8, 96, 96) and data.classes == EMOTIONS8
        for name, label, image in zip(data.names, data.labels, data.images):
            emotion, face = written[name]
            assert EMOTIONS8[label] == emotion
            assert close(image, face)


# ---------------------------------------------------------------- SFEW and plain folders

def test_sfew_folders(tmp_path, faces):
    folder_names = {"Angry": "anger", "Disgust": "disgust", "Fear": "fear", "Happy": "happiness",
                    "Neutral": "neutral", "Sad": "sadness", "Surprise": "surprise"}
    for split, slot in (("Train", 0), ("Val", 1)):
        for folder_name, emotion in folder_names.items():
            write_image(tmp_path / "sfew" / split / folder_name / f"{emotion}_{slot}.png",
                        faces[emotion][slot], side=72)
    for split in ("train", "valid", "test"):
        data = load("sfew", tmp_path / "sfew", split, tmp_path / "cache", size=72)
        assert data.images.shape == (7, 72, 72, 3) and data.classes == EMOTIONS7
        for name, label in zip(data.names, data.labels):
            assert folder_names[name.split("/")[0]] == EMOTIONS7[label]
    (tmp_path / "sfew" / "Train" / "Suprise").mkdir()
    with pytest.raises(DatasetError, match="Suprise") as error:
        load("sfew", tmp_path / "sfew", "train", tmp_path / "cache")
    assert sfew.LAYOUT in str(error.value)


def test_folder_flat_with_synonyms(tmp_path, faces):
    spellings = {"Happy": "happiness", "sad": "sadness", "ANGRY": "anger", "surprised": "surprise",
                 "neutral": "neutral", "disgusted": "disgust", "Fearful": "fear"}
    for folder_name, emotion in spellings.items():
        for j, face in enumerate(faces[emotion][:2]):
            suffix = ".jpeg" if j else ".JPG"
            write_image(tmp_path / "flat" / folder_name / f"img{j}{suffix}", face)
    (tmp_path / "flat" / "Happy" / "notes.txt").write_text("not an image")
    (tmp_path / "flat" / ".ipynb_checkpoints").mkdir()
    data = load("folder", tmp_path / "flat", "test", tmp_path / "cache", size=48, color="gray")
    assert data.classes == EMOTIONS7 and data.images.shape == (14, 48, 48)
    for name, label, image in zip(data.names, data.labels, data.images):
        folder_name, file_name = name.split("/")
        assert EMOTIONS7[label] == spellings[folder_name]
        assert close(image, faces[spellings[folder_name]][int(file_name[3])])


def test_folder_with_split_folders_and_contempt(tmp_path, faces):
    for split, slot in (("train", 0), ("val", 1)):
        for emotion in ("contempt", "happiness"):
            write_image(tmp_path / "split" / split / emotion / "a.png", faces[emotion][slot])
    data = load("folder", tmp_path / "split", "valid", tmp_path / "cache")
    assert data.classes == EMOTIONS8 and data.images.shape == (2, 100, 100, 3)
    assert [EMOTIONS8[k] for k in data.labels] == ["contempt", "happiness"]
    with pytest.raises(DatasetError, match="none for split 'test'") as error:
        load("folder", tmp_path / "split", "test", tmp_path / "cache")
    assert folder.LAYOUT in str(error.value)
    (tmp_path / "split" / "train" / "suprise").mkdir()
    with pytest.raises(DatasetError, match="suprise"):
        load("folder", tmp_path / "split", "train", tmp_path / "cache")


# ---------------------------------------------------------------- layout errors

LAYOUTS = {"ferplus": ferplus.LAYOUT, "rafdb": rafdb.LAYOUT, "fer2013": fer2013.LAYOUT,
           "affectnet": affectnet.LAYOUT, "sfew": sfew.LAYOUT, "folder": folder.LAYOUT}


def test_dataset_names():
    assert sorted(dataset_names()) == sorted(LAYOUTS)


@pytest.mark.parametrize("dataset", sorted(LAYOUTS))
def test_missing_root_names_the_layout(tmp_path, dataset):
    with pytest.raises(DatasetError, match="does not exist") as error:
        load(dataset, tmp_path / "nowhere", "train", tmp_path / "cache")
    assert LAYOUTS[dataset] in str(error.value)


@pytest.mark.parametrize("dataset", ["ferplus", "rafdb", "fer2013", "affectnet", "sfew"])
def test_empty_root_names_the_layout(tmp_path, dataset):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="missing") as error:
        load(dataset, tmp_path / "empty", "train", tmp_path / "cache")
    assert LAYOUTS[dataset] in str(error.value)


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


MALFORMED = {
    "ferplus": ("FER2013Test/label.csv",
                'fer0000001.png,"(0, 0, 48, 48)",4,0,0,1,3,2,0,0,0,0\nfer0000002.png,x,1,2\n',
                "line 2 is malformed"),
    "rafdb": ("EmoLabel/list_patition_label.txt", "train_00001.jpg 5\ntrain_00002.jpg nine\n",
              "line 2 is malformed"),
    "fer2013": ("fer2013.csv", "emotion,pixel,Usage\n0,1 2 3,Training\n", "lacks columns pixels"),
    "affectnet": ("training.csv", "a/b.jpg,1,2,3\n", "line 1 is malformed"),
}


@pytest.mark.parametrize("dataset", sorted(MALFORMED))
def test_malformed_label_file_names_the_layout(tmp_path, dataset):
    relative, text, problem = MALFORMED[dataset]
    root = tmp_path / "root"
    _write(root / relative, text)
    for folder_name in ("Image/aligned", "Manually_Annotated_Images"):
        (root / folder_name).mkdir(parents=True)
    split = "test" if dataset == "ferplus" else "train"
    with pytest.raises(DatasetError, match=problem) as error:
        load(dataset, root, split, tmp_path / "cache")
    assert LAYOUTS[dataset] in str(error.value)


def test_missing_and_bad_pixels_are_listed_together(tmp_path, faces):
    root = tmp_path / "fer"
    pixels = " ".join(map(str, faces["fear"][0].ravel()))
    _write(root / "fer2013.csv", "emotion,pixels,Usage\n"
           f"2,{pixels},Training\n2,1 2 3,Training\n2,{pixels} 999,Training\n")
    with pytest.raises(DatasetError, match="2 of 3 images could not be read") as error:
        load("fer2013", root, "train", tmp_path / "cache")
    assert fer2013.LAYOUT in str(error.value)
    write_rafdb(tmp_path / "basic", faces)
    (tmp_path / "basic" / "Image" / "aligned" / "test_00002_aligned.jpg").unlink()
    with pytest.raises(DatasetError, match="test_00002_aligned.jpg"):
        load("rafdb", tmp_path / "basic", "test", tmp_path / "cache")


def test_unknown_dataset_split_and_mode(ferplus_root, tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset 'ckplus'"):
        load("ckplus", ferplus_root, "test", tmp_path)
    with pytest.raises(DatasetError, match="no split 'holdout'") as error:
        load("ferplus", ferplus_root, "holdout", tmp_path)
    assert ferplus.LAYOUT in str(error.value)
    with pytest.raises(DatasetError, match="label modes majority"):
        load("rafdb", tmp_path, "train", tmp_path, label_mode="crossentropy")
