"""Frame sources on real files: videos, images, folders, the demo, and every way they fail."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from app.errors import SourceError
from app.sources import DemoSource, ImageSource, VideoSource, list_cameras, open_source


def _write_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture()
def astronaut_video(tmp_path, astronaut_bgr) -> Path:
    frames = [np.roll(astronaut_bgr, 8 * i, axis=1) for i in range(12)]
    return _write_video(tmp_path / "clip.avi", frames)


def test_video_frames_indices_and_times(astronaut_video):
    with open_source(str(astronaut_video)) as source:
        assert isinstance(source, VideoSource) and source.fps == pytest.approx(10.0)
        frames = list(source)
    assert [f.index for f in frames] == list(range(12))
    assert frames[0].image.shape == (512, 512, 3)
    assert frames[5].source_time == pytest.approx(0.5, abs=0.01)


def test_video_loop_keeps_going(astronaut_video):
    source = open_source(str(astronaut_video), loop=True)
    frames = []
    for frame in source:
        frames.append(frame)
        if len(frames) == 30:
            break
    source.close()
    assert frames[-1].index == 29


def test_zero_byte_and_garbage_video(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(SourceError, match="empty"):
        open_source(str(empty))
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(SourceError, match="Cannot decode video"):
        open_source(str(garbage))


def test_missing_path_and_camera():
    with pytest.raises(SourceError, match="Source not found"):
        open_source("/no/such/file.mp4")
    missing = 63
    assert missing not in [c.index for c in list_cameras()]
    with pytest.raises(SourceError, match="Camera 63 cannot be opened"):
        open_source(str(missing))


def test_image_and_corrupt_image(tmp_path, astronaut_bgr):
    good = tmp_path / "face.png"
    cv2.imwrite(str(good), astronaut_bgr)
    frames = list(open_source(str(good)))
    assert len(frames) == 1 and np.array_equal(frames[0].image, astronaut_bgr)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(SourceError, match="Cannot decode image"):
        open_source(str(bad))


def test_folder_skips_corrupt_files_and_says_so(tmp_path, ferplus_root):
    for name in sorted(p.name for p in (ferplus_root / "FER2013Test").glob("*.png"))[:3]:
        (tmp_path / name).write_bytes((ferplus_root / "FER2013Test" / name).read_bytes())
    (tmp_path / "zz_broken.png").write_bytes(b"broken")
    source = open_source(str(tmp_path))
    assert isinstance(source, ImageSource)
    frames = list(source)
    assert len(frames) == 3 and frames[0].image.ndim == 2  # FERPlus is gray: kept as such
    assert [p.name for p, _ in source.skipped] == ["zz_broken.png"]


def test_empty_folder(tmp_path):
    with pytest.raises(SourceError, match="No images"):
        open_source(str(tmp_path))


def test_demo_moves_and_ends():
    source = DemoSource(frames=20)
    frames = list(source)
    assert len(frames) == 20 and frames[0].image.shape == (480, 640, 3)
    assert not np.array_equal(frames[0].image, frames[10].image)


def test_read_ahead_gives_the_same_frames_raises_where_the_source_failed_and_stops_early():
    import threading

    from app.errors import SourceError
    from app.sources import DemoSource, read_ahead

    direct = [f.image for f in DemoSource(frames=12)]
    ahead = [f.image for f in read_ahead(DemoSource(frames=12), depth=3)]
    assert len(ahead) == 12 and all(np.array_equal(a, b) for a, b in zip(direct, ahead))
    assert [f.index for f in read_ahead(DemoSource(frames=3), depth=0)] == [0, 1, 2]

    def failing():
        yield from DemoSource(frames=3)
        raise SourceError("camera 0 disappeared")

    got = []
    with pytest.raises(SourceError, match="disappeared"):
        for frame in read_ahead(failing(), depth=4):
            got.append(frame.index)
    assert got == [0, 1, 2]  # every frame before the failure arrived first

    for frame in read_ahead(DemoSource(frames=None), depth=2):  # endless: leave after two
        if frame.index == 1:
            break
    assert not [t for t in threading.enumerate() if t.name == "occlufer-read-ahead"]
