"""The pipelined executor: the stages of consecutive frames run at the same time, on both
cores, with the results of the stages run one after another.

Why this split: every frame's work falls into three parts. The detector (RetinaFace over the
whole frame, the largest single stage) depends on nothing but the frame's pixels. Tracking,
face following under `--detect-every N` (frame t's boxes moved by frame t's FaceMesh points
onto frame t+1), alignment and FaceMesh carry state from one frame to the next
(`FacePipeline.start`). The landmark student, occlusion, parsing and expression read only their
own frame (`FacePipeline.finish`). So the detector runs one frame ahead, `start` runs in frame
order on the caller's thread, and `finish` of frame t runs on a finisher thread while frame
t+1 starts; the rows are those of the sequential path (tests/test_pipelined.py holds them
equal). onnxruntime releases the GIL inside `session.run`, so the threads really use the cores.

Whether the next frame needs the detector is only known once this frame is done (a followed
face may be lost). The executor asks the pipeline for a forecast (`FacePipeline.detects_after`)
and detects ahead only when the detector is expected; a wrong forecast costs time, never a
result: an unneeded detection is dropped, a missing one runs on the spot.

Bounded by construction: one frame is pulled and detected ahead and one is finishing, never
more, and only when the consumer asks for the next frame, so a stalled sink stops the source
(with `read_ahead`'s bounded queue in front of it) instead of queueing frames. The frame is
pulled inside the detector's worker, so a camera or the app's newest-frame slot is read the
moment a frame arrives, and the pull never delays the frame being analysed. The app runs the
same three parts through app/pipeline/live_executor.py, which hands each result on the moment
it is finished instead of once the next frame has started.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from app.errors import BadFrameError
from app.pipeline.pipeline import FacePipeline
from app.pipeline.records import Detection, Frame, FrameResult


@dataclass
class Prepared:
    """A frame pulled from the source with, when the detector ran ahead, its detection.
    `frame` is None when the pull gave nothing (the app's slot timed out)."""

    frame: Frame | None
    detection: Detection | None = None


class _End:
    """The source is exhausted."""


END = _End()


def detect(detector: Callable, frame: Frame) -> Detection:
    """Run `detector` on `frame`, catching what it raises so that the frame's own turn (in
    order, on the caller's thread) raises it, as the sequential path would."""
    started = time.perf_counter()
    try:
        faces, error = detector(frame.image), None
    except Exception as exc:  # a bad frame, an onnxruntime failure: raised in order, if used
        faces, error = None, exc
    return Detection(faces=faces, error=error, detector=detector, started=started,
                     ms=(time.perf_counter() - started) * 1e3)


class DetectAhead:
    """Pull frames with `pull` and detect each one ahead, one frame in flight at most.

    `pull()` returns the next frame, None when there is none yet (try again), or raises
    StopIteration at the end of the source; any other exception is raised by `take` at the
    point in the stream where it happened. Call `take(pipeline)` once per frame, then
    `pipeline.process(prepared.frame, prepared.detection)`; `close()` when done (waits for the
    frame in flight, so the source can be closed safely afterwards)."""

    def __init__(self, pull: Callable[[], Frame | None]) -> None:
        self._pull = pull
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="occlufer-detect-ahead")
        self._pending: Future | None = None
        self.detected_ahead = 0  # detections made ahead (whether the frame used them or not)

    def _job(self, detector: Callable | None) -> Prepared | _End:
        try:
            frame = self._pull()
        except StopIteration:
            return END
        if frame is None or detector is None:
            return Prepared(frame)
        return Prepared(frame, detect(detector, frame))

    def _submit(self, pipeline: FacePipeline | None, wanted: bool) -> None:
        detector = pipeline.detector if pipeline is not None and wanted else None
        self._pending = self._pool.submit(self._job, detector)

    def prime(self, pipeline: FacePipeline | None) -> Future:
        """The job pulling (and maybe detecting) the next frame, started now if none runs; for
        a caller that waits on it together with other work (app/pipeline/live_executor.py)."""
        if self._pending is None:  # the first frame, or after `discard`: nothing ran ahead
            self._submit(pipeline, pipeline is not None and pipeline.detects_now())
        assert self._pending is not None
        return self._pending

    def take(self, pipeline: FacePipeline | None) -> Prepared | _End:
        """The next frame (with its detection, if it ran ahead), and the one after it started.

        `pipeline` is the one about to process the returned frame (None: no detector is
        loaded, frames are only pulled); its state now decides whether the frame after is
        detected ahead. Source errors are raised here, in order."""
        pending = self.prime(pipeline)
        self._pending = None
        item = pending.result()  # re-raises what pull raised
        if isinstance(item, _End):
            return END
        if item.detection is not None:
            self.detected_ahead += 1
        self._submit(pipeline, pipeline is not None and pipeline.detects_after(item.detection))
        return item

    def discard(self) -> None:
        """Drop the frame in flight (the source changed: it belongs to the old one)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                pending.result()
            except Exception:  # the old source's error is no longer anyone's concern
                pass

    def close(self) -> None:
        self.discard()
        self._pool.shutdown(wait=True)


def pipelined(frames: Iterable[Frame], pipeline: FacePipeline) -> Generator[Prepared, None, None]:
    """`frames` with each frame's detection run ahead (see the module doc): iterate, and call
    `pipeline.process(p.frame, p.detection)` on each item before asking for the next; the
    frame after the one yielded is being pulled and detected meanwhile. Leaving the loop
    early waits for the frame in flight, then closes `frames` if it is a generator."""
    iterator = iter(frames)
    ahead = DetectAhead(lambda: next(iterator))
    try:
        while True:
            item = ahead.take(pipeline)
            if isinstance(item, _End):
                return
            yield item
    finally:
        ahead.close()
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


Outcome = tuple[Frame, "FrameResult | BadFrameError"]


def _outcome(frame: Frame, finishing: Future) -> Outcome:
    try:
        return frame, finishing.result()
    except BadFrameError as exc:
        return frame, exc


def results(frames: Iterable[Frame], pipeline: FacePipeline,
            pipeline_ahead: bool = True) -> Generator[Outcome, None, None]:
    """(frame, its FrameResult or the BadFrameError that skipped it), in frame order: the
    executor of `occlufer run`, `app.api` and `occlufer bench`.

    Pipelined, three things happen at once: the detector on frame t+2 (`pipelined`), the
    stages frame t+1 needs from frame t (`FacePipeline.start`: follow or detect, track,
    align, FaceMesh) on the caller's thread, and the stages that read only frame t
    (`FacePipeline.finish`: landmark student, occlusion, expression) on a finisher thread;
    state passes between frames only through `start`, in order, so the results are those of
    `pipeline.process` one frame after another. Frames held ahead of the consumer: two (one
    finishing, one detected), never more; leaving the loop early waits for both.
    `pipeline_ahead=False`: `pipeline.process` on one frame after another."""
    if not pipeline_ahead:
        for frame in frames:
            try:
                yield frame, pipeline.process(frame)
            except BadFrameError as exc:
                yield frame, exc
        return
    finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="occlufer-finish")
    stream = pipelined(frames, pipeline)
    waiting: tuple[Frame, Future] | None = None
    try:
        while True:
            try:
                item = next(stream)
            except StopIteration:
                break
            except BaseException:  # the source failed: the frames before it come out first
                if waiting is not None:
                    last, waiting = waiting, None
                    yield _outcome(*last)
                raise
            try:
                started = pipeline.start(item.frame, item.detection)
            except BadFrameError as exc:  # changed nothing; its turn comes after frame t
                if waiting is not None:
                    yield _outcome(*waiting)
                    waiting = None
                yield item.frame, exc
                continue
            finishing = finisher.submit(pipeline.finish, started)
            if waiting is not None:
                yield _outcome(*waiting)
            waiting = (item.frame, finishing)
        if waiting is not None:
            last, waiting = waiting, None
            yield _outcome(*last)
    finally:
        if waiting is not None:
            waiting[1].exception()  # wait: the models may be closed after this returns
        finisher.shutdown(wait=True)
        stream.close()


__all__ = ["DetectAhead", "Prepared", "END", "detect", "pipelined", "results"]
