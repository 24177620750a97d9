"""The pipelined executor for a live view: the newest frame only, each result handed on as
soon as it exists.

`executor.results` suits a file: it hands frame t on once frame t+1 has started, which on a
camera would hold every result back until the next frame arrives (a frame interval of extra
lag). Here the frame being finished (landmark student, occlusion, expression on the finisher
thread) and the next frame (pulled from the newest-frame slot and detected by the
`DetectAhead` worker) are waited on together: whichever comes first is served, so a result is
handed on the moment it is finished when no newer frame is there yet, and frame t+1 starts
beside frame t's finish when it is. Order, results and the newest-frame-only policy are those
of `pipeline.process` on each frame taken (tests/test_pipelined.py); at most one frame is
being finished and one pulled ahead.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from app.pipeline.executor import END, DetectAhead
from app.pipeline.pipeline import FacePipeline
from app.pipeline.records import Frame, FrameResult

#: (frame, its result or what analysing it raised), in frame order
Outcome = tuple[Frame, "FrameResult | Exception"]


class LiveExecutor:
    """Call `step(pipeline)` in a loop (run commands between two calls); it returns the
    outcomes ready now, in order, possibly none. `drain()` hands on the frame still
    finishing (before the pipeline or the source changes); `close()` when done.

    `take(timeout)` gives the newest frame or None (the app's `LatestFrameSlot.take`);
    `pipelined=False` analyses each frame with `pipeline.process` on the calling thread."""

    def __init__(self, take: Callable[[float], Frame | None], pipelined: bool = True,
                 timeout: float = 0.05) -> None:
        self._take, self.pipelined, self.timeout = take, pipelined, timeout
        self._ahead = DetectAhead(lambda: take(timeout)) if pipelined else None
        self._finisher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="occlufer-finish") \
            if pipelined else None
        self._finishing: tuple[Frame, Future] | None = None

    def step(self, pipeline: FacePipeline | None) -> list[Outcome]:
        if self._ahead is None:
            frame = self._take(self.timeout)
            return [] if frame is None else [_process(pipeline, frame)]
        ahead = self._ahead.prime(pipeline)
        if self._finishing is not None:
            wait([self._finishing[1], ahead], timeout=self.timeout, return_when=FIRST_COMPLETED)
            if not ahead.done():  # no newer frame yet: hand the finished one on at once
                return self.drain() if self._finishing[1].done() else []
        item = self._ahead.take(pipeline)
        if item is END or item.frame is None:
            return []
        frame = item.frame
        if pipeline is None:  # no detector loaded: frames pass through empty
            return self.drain() + [(frame, FrameResult(frame=frame, faces=[], latency_ms={}))]
        try:
            started = pipeline.start(frame, item.detection)
        except Exception as exc:  # a bad frame or a failing model: its turn, in order
            return self.drain() + [(frame, exc)]
        done = self.drain()  # frame t finished beside frame t+1's start
        assert self._finisher is not None
        self._finishing = (frame, self._finisher.submit(pipeline.finish, started))
        return done

    def drain(self) -> list[Outcome]:
        """The frame being finished, once finished (nothing when none is)."""
        finishing, self._finishing = self._finishing, None
        if finishing is None:
            return []
        frame, future = finishing
        try:
            return [(frame, future.result())]
        except Exception as exc:
            return [(frame, exc)]

    def discard(self) -> None:
        """Drop the frame pulled ahead (the source changed: it belongs to the old one)."""
        if self._ahead is not None:
            self._ahead.discard()

    def close(self) -> list[Outcome]:
        """Stop; returns the outcome of the frame that was still finishing."""
        left = self.drain()
        if self._ahead is not None:
            self._ahead.close()
        if self._finisher is not None:
            self._finisher.shutdown(wait=True)
        return left


def _process(pipeline: FacePipeline | None, frame: Frame) -> Outcome:
    if pipeline is None:
        return frame, FrameResult(frame=frame, faces=[], latency_ms={})
    try:
        return frame, pipeline.process(frame)
    except Exception as exc:
        return frame, exc


__all__ = ["LiveExecutor", "Outcome"]
