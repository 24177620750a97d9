"""Where frames come from: a camera, a video file, one image, an image folder, or the demo.

Every source is an iterator of `Frame` with a `close()`; opening checks what can be checked
up front (camera present, file decodable) so a bad source fails before anything is recorded.
"""

from __future__ import annotations

import glob
import math
import os
import queue
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from app import ASSETS_DIR
from app.errors import SourceError
from app.pipeline.records import Frame

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
#: Consecutive failed reads after which a camera counts as lost (about 1 s at 30 fps).
CAMERA_LOST_AFTER = 30
#: Consecutive undecodable frames inside a video after which the rest counts as unreadable.
VIDEO_CORRUPT_RUN = 30


@dataclass(frozen=True)
class CameraInfo:
    index: int
    name: str


def list_cameras(max_index: int = 10) -> list[CameraInfo]:
    """Cameras the OS reports; on Linux from sysfs (no device is opened), elsewhere by probing."""
    if sys.platform.startswith("linux"):
        found = []
        for dev in sorted(glob.glob("/dev/video*")):
            suffix = dev.removeprefix("/dev/video")
            if not suffix.isdigit():
                continue
            name_file = Path(f"/sys/class/video4linux/video{suffix}/name")
            name = name_file.read_text().strip() if name_file.is_file() else dev
            found.append(CameraInfo(int(suffix), name))
        return found
    found = []
    for index in range(max_index):
        cap = cv2.VideoCapture(index)
        if cap.isOpened():
            found.append(CameraInfo(index, f"Camera {index}"))
        cap.release()
    return found


class FrameSource:
    """Base: iterate to get frames; `fps` is the nominal rate (None when unknown)."""

    name: str = "source"
    fps: float | None = None

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CameraSource(FrameSource):
    def __init__(self, index: int, width: int | None = None, height: int | None = None) -> None:
        self.name = f"camera:{index}"
        self._cap = cv2.VideoCapture(index)
        if not self._cap.isOpened():
            self._cap.release()
            known = ", ".join(f"{c.index} ({c.name})" for c in list_cameras()) or "none"
            raise SourceError(
                f"Camera {index} cannot be opened: it does not exist or another program holds it. "
                f"Cameras found: {known}. Try `--source demo` or a video file."
            )
        if width and height:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or None

    def __iter__(self) -> Iterator[Frame]:
        index, failures = 0, 0
        while True:
            ok, image = self._cap.read()
            if not ok or image is None:
                failures += 1
                if failures >= CAMERA_LOST_AFTER:
                    raise SourceError(f"{self.name} stopped delivering frames (unplugged?)")
                time.sleep(0.03)
                continue
            failures = 0
            yield Frame(image=image, index=index, timestamp=time.time())
            index += 1

    def close(self) -> None:
        self._cap.release()


class VideoSource(FrameSource):
    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path, self.loop, self.name = path, loop, str(path)
        if not path.is_file():
            raise SourceError(f"Video file not found: {path}")
        if path.stat().st_size == 0:
            raise SourceError(f"Video file is empty (0 bytes): {path}")
        self._cap = cv2.VideoCapture(str(path))
        ok, first = self._cap.read() if self._cap.isOpened() else (False, None)
        if not ok or first is None:
            self._cap.release()
            raise SourceError(f"Cannot decode video {path}: not a video or corrupt")
        self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self.fps = self._cap.get(cv2.CAP_PROP_FPS) or None
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.skipped: list[tuple[int, str]] = []  # (frame index, why): corrupt frames, reported not fatal

    def __iter__(self) -> Iterator[Frame]:
        index, position_in_file, corrupt_run = 0, 0, 0
        while True:
            ok, image = self._cap.read()
            position = self._cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0  # of the frame just read
            if not ok or image is None:
                # a failed read before the container's last frame is one corrupt frame: the
                # decoder moves on to the next, so skip it (and say so) instead of ending early
                if position_in_file < self.frame_count - 1 and corrupt_run < VIDEO_CORRUPT_RUN:
                    self.skipped.append((index, f"frame {position_in_file} of {self.path.name} "
                                                "cannot be decoded (corrupt); skipped"))
                    index, position_in_file, corrupt_run = index + 1, position_in_file + 1, corrupt_run + 1
                    continue
                if self.loop and index > 0:
                    self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                    position_in_file, corrupt_run = 0, 0
                    continue
                return
            corrupt_run = 0
            yield Frame(image=image, index=index, timestamp=time.time(), source_time=position)
            index, position_in_file = index + 1, position_in_file + 1

    def close(self) -> None:
        self._cap.release()


def read_image(path: Path) -> np.ndarray:
    """Read an image file as BGR uint8 (gray and alpha are kept as OpenCV gives them)."""
    if not path.is_file():
        raise SourceError(f"Image file not found: {path}")
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        if not path.is_file():  # deleted between the check and the read: say that, not "corrupt"
            raise SourceError(f"Image file not found: {path}")
        raise SourceError(f"Cannot decode image {path}: not an image or corrupt")
    if image.dtype != np.uint8:  # 16-bit PNG / TIFF
        image = cv2.convertScaleAbs(image, alpha=255.0 / max(1, int(image.max())))
    return image


class ImageSource(FrameSource):
    def __init__(self, paths: list[Path], name: str, loop: bool = False) -> None:
        self.paths, self.name, self.loop = paths, name, loop
        self.skipped: list[tuple[Path, str]] = []  # unreadable files, reported not fatal

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while True:
            for path in self.paths:
                try:
                    image = read_image(path)
                except SourceError as exc:
                    if len(self.paths) == 1:
                        raise
                    self.skipped.append((path, str(exc)))
                    continue
                yield Frame(image=image, index=index, timestamp=time.time())
                index += 1
            if not self.loop or index == 0:
                return


class DemoSource(FrameSource):
    """A public-domain face (the astronaut) drifting and zooming across a 640x480 canvas.

    Generated on the fly so a user without a camera or data sees the pipeline work.
    """

    name = "demo"
    fps = 30.0

    def __init__(self, frames: int | None = 300, width: int = 640, height: int = 480) -> None:
        path = ASSETS_DIR / "samples" / "astronaut.jpg"
        self._face = read_image(path)
        self.frames, self.size = frames, (width, height)

    def face_matrix(self, index: int) -> np.ndarray:
        """The 2x3 affine placing the face photo on the canvas at frame `index`."""
        width, height = self.size
        t = index / self.fps
        scale = 0.75 + 0.15 * math.sin(t * 0.9)
        angle = 8.0 * math.sin(t * 0.6)
        cx = width / 2 + 80 * math.sin(t * 0.5)
        cy = height / 2 + 30 * math.sin(t * 0.7)
        h, w = self._face.shape[:2]
        matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
        matrix[:, 2] += (cx - w / 2, cy - h / 2)
        return matrix

    def render(self, index: int) -> np.ndarray:
        return cv2.warpAffine(self._face, self.face_matrix(index), self.size, borderValue=(40, 40, 40))

    def __iter__(self) -> Iterator[Frame]:
        index = 0
        while self.frames is None or index < self.frames:
            yield Frame(image=self.render(index), index=index, timestamp=time.time(),
                        source_time=index / self.fps)
            index += 1


def open_source(spec: str | int, loop: bool = False, width: int | None = None,
                height: int | None = None) -> FrameSource:
    """`demo`, a camera index, a video file, an image file or a folder of images."""
    text = str(spec)
    if text == "demo":  # the drifting face with occluders passing over it (app/demo.py)
        from app.demo import OccludedDemoSource

        return OccludedDemoSource(frames=None if loop else 300, width=width or 640,
                                  height=height or 480)
    if text.isdigit():
        return CameraSource(int(text), width, height)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        images = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise SourceError(f"No images ({', '.join(sorted(IMAGE_SUFFIXES))}) in folder {path}")
        return ImageSource(images, name=str(path), loop=loop)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        read_image(path)  # fail now, not mid-run
        return ImageSource([path], name=str(path), loop=loop)
    if not path.exists():
        raise SourceError(f"Source not found: {text} (use a camera index, a video, an image, "
                          "a folder of images, or `demo`)")
    return VideoSource(path, loop=loop)


_END = object()


def read_ahead(frames: Iterable[Frame], depth: int = 4) -> Iterator[Frame]:
    """`frames`, decoded by a background thread up to `depth` frames ahead of the consumer.

    Why: `occlufer run` on a file or the demo otherwise decodes and analyses in turn, so the
    pipeline waits for every decode; OpenCV's decoders and warps release the GIL, so a reader
    thread overlaps the two (measured in BENCHMARKS.md). Not for cameras: a queue of stale
    frames is latency, and the camera driver buffers already. An error in the source (a file
    that ends badly, a camera that vanishes) is raised here at the frame where it happened;
    leaving the loop early stops the reader."""
    if depth < 1:
        yield from frames
        return
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: object) -> bool:
        """Put `item` once there is room; False when the consumer has left."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read() -> None:
        try:
            for frame in frames:
                if not offer(frame):
                    return
            offer(_END)
        except BaseException as exc:  # handed to the consumer, raised there
            offer(exc)

    reader = threading.Thread(target=read, name="occlufer-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            item = slots.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        reader.join(timeout=2.0)
