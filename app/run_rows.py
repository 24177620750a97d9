"""The rows `occlufer run` produces, as one code path for the CLI and the Python API.

Why a module of its own: `occlufer run` (app/cli.py) writes these rows to a CSV and
`app.api.analyze` hands the very same rows to a notebook. Both go through `RunRows`, so a
change to how a run is made (its defaults, an executor that pipelines the stages, a new
column) reaches both at once and the two can never drift apart; tests/test_api.py runs the
CLI and the API side by side to hold them equal.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.errors import BadFrameError
from app.runtime.store import ModelStore

#: Pipeline options a run takes, named and defaulted as `occlufer run`'s flags are
#: (--device, --threads, --score, --detector, --detect-side, --detect-every, --landmarks).
PIPELINE_DEFAULTS: dict[str, Any] = {"device": "auto", "threads": None, "score": 0.5,
                                     "detector": "retinaface_mnet025", "detect_side": 640,
                                     "detect_every": 1, "landmarks": "auto"}
#: The expression model of a run that names none (`occlufer run` without --model, and
#: `app.api.analyze(model=None)`): one default for both, the manifest's best model
#: (`ModelStore.default_expression_model`); "none" runs no expression stage.
DEFAULT_MODEL: str | None = "default"
#: Source and executor options of `occlufer run` (--loop, --read-ahead, --pipeline /
#: --no-pipeline: the detector runs one frame ahead on the other core, app/pipeline/executor.py).
SOURCE_DEFAULTS: dict[str, Any] = {"loop": False, "read_ahead": 4, "pipelined": True}


def pipeline_kwargs(model: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """`build_pipeline` keyword arguments from run options named as the CLI names them."""
    unknown = set(options) - set(PIPELINE_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown pipeline option(s) {sorted(unknown)}; "
                        f"known: {sorted(PIPELINE_DEFAULTS)}")
    merged = {**PIPELINE_DEFAULTS, **options}
    return {"device": merged["device"], "threads": merged["threads"],
            "score_threshold": merged["score"], "detector_model": merged["detector"],
            "expression_model": model, "max_side": merged["detect_side"],
            "detect_every": merged["detect_every"], "landmark_model": merged["landmarks"]}


def _say_bad_frame(index: int, exc: BadFrameError) -> None:
    print(f"frame {index} skipped: {exc}", file=sys.stderr)


@dataclass
class RunRows:
    """An opened source, its pipeline and the CSV schema: iterate `frames()` for the rows.

    Opening checks the source before the models load (a bad source fails before anything is
    created, as `occlufer run` always did). Use as a context manager so the source closes.
    """

    source: Any
    pipeline: Any
    schema: Any
    model: str | None
    read_ahead: int
    bad_frames: int = 0
    #: the detector works on the next frame while this one's faces are analysed (same rows)
    pipelined: bool = True
    #: frames analysed and the wall time they took (from the first frame asked for to the last
    #: one's rows), for `speed()`
    analysed: int = 0
    wall_s: float = 0.0

    @classmethod
    def open(cls, source: str | int | Path, *, model: str | None = DEFAULT_MODEL,
             store: ModelStore | None = None, loop: bool = False, read_ahead: int = 4,
             pipelined: bool = True, **pipeline_options: Any) -> "RunRows":
        from app.pipeline.pipeline import build_pipeline
        from app.session_rows import SessionSchema, expression_classes
        from app.sources import CameraSource, open_source

        store = store or ModelStore()
        model = store.resolve_expression_model(model)
        opened = open_source(str(source), loop=loop)
        try:
            pipeline = build_pipeline(store, **pipeline_kwargs(model, pipeline_options))
            schema = SessionSchema(expression_classes(store, [model] if model else []))
        except BaseException:
            opened.close()
            raise
        depth = 0 if isinstance(opened, CameraSource) else read_ahead
        return cls(source=opened, pipeline=pipeline, schema=schema, model=model, read_ahead=depth,
                   pipelined=pipelined)

    @property
    def columns(self) -> list[str]:
        return self.schema.columns

    def frames(self, max_frames: int | None = None,
               on_bad_frame: Callable[[int, BadFrameError], None] | None = _say_bad_frame,
               ) -> Iterator[list[dict[str, Any]]]:
        """The rows of each analysed frame, frame by frame (one per face, or one `faces = 0`
        row), exactly as `occlufer run` writes them; a bad frame is skipped and counted."""
        from app.pipeline.executor import results
        from app.pipeline.smoothing import ExpressionSmoother
        from app.sources import read_ahead

        smoother = ExpressionSmoother()
        start = time.perf_counter()
        reader = read_ahead(self.source, self.read_ahead)
        frames: Iterator = reader
        if max_frames is not None:  # stop feeding the executor, not just reading its output
            frames = itertools.takewhile(lambda f: f.index < max_frames, reader)
        stream = results(frames, self.pipeline, self.pipelined)
        try:
            for frame, result in stream:
                if isinstance(result, BadFrameError):
                    self.bad_frames += 1
                    if on_bad_frame is not None:
                        on_bad_frame(frame.index, result)
                    continue
                rows = self.schema.rows(smoother.update(result), self.model)
                self.analysed += 1
                self.wall_s = time.perf_counter() - start
                yield rows
        finally:
            stream.close()  # waits for the frames in flight before the source may close
            reader.close()  # and stops the reader thread

    def speed(self) -> dict[str, float | None]:
        """Frames analysed, wall seconds, fps and, for a source with a nominal rate (a video
        file, the demo), how many times real time the run went ("x real time": 2.0 analyses an
        hour of video in half an hour). The wall time includes waiting on the source."""
        from app.sources import CameraSource

        fps = self.analysed / self.wall_s if self.wall_s > 0 else None
        # a camera delivers in real time by definition: its rate is not a speed of analysis
        nominal = None if isinstance(self.source, CameraSource) else getattr(self.source, "fps", None)
        realtime = fps / nominal if fps is not None and nominal else None
        return {"frames": self.analysed, "wall_s": round(self.wall_s, 3),
                "fps": round(fps, 2) if fps is not None else None,
                "source_fps": nominal, "x_real_time": round(realtime, 2) if realtime else None}

    def close(self) -> None:
        self.source.close()

    def __enter__(self) -> "RunRows":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
