"""occlufer from Python: the rows of `occlufer run` for notebooks and scripts.

    from app.api import analyze
    rows = analyze("demo", model="resnet18_fast", max_frames=150)

Every function here returns rows with exactly the columns of the `occlufer run` CSV, in its
order, with the values that CSV holds, typed (int for frame/faces/face/track_id/detected,
float for numbers, str for text, None for an empty cell). They are produced by the same code
as the CLI's (`app.run_rows.RunRows`), so the two cannot drift apart.

Pipeline options are named as the CLI's flags: device, threads, score, detector, detect_side,
detect_every, and for sources loop, read_ahead and pipelined (the detector one frame
ahead on another core; the same rows); `store` is a `ModelStore` or a folder.
"""

from __future__ import annotations

import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from app.errors import BadFrameError, OccluferError
from app.run_rows import DEFAULT_MODEL, SOURCE_DEFAULTS, RunRows
from app.runtime.store import ModelStore
from app.session_csv import Value, typed_row

Row = dict[str, Value]

__all__ = ["analyze", "iter_analyze", "analyze_image", "ImageAnalyzer"]


def _store(store: ModelStore | str | Path | None) -> ModelStore:
    if isinstance(store, ModelStore):
        return store
    return ModelStore(root=Path(store) if store is not None else None)


def _split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(source options, pipeline options) of the keyword arguments."""
    source = {k: options.pop(k) for k in list(options) if k in SOURCE_DEFAULTS}
    return {**SOURCE_DEFAULTS, **source}, options


def _warn_bad_frame(index: int, exc: BadFrameError) -> None:
    warnings.warn(f"frame {index} skipped: {exc}", stacklevel=3)


def iter_analyze(source: str | int | Path, model: str | None = DEFAULT_MODEL,
                 max_frames: int | None = None, *, store: ModelStore | str | Path | None = None,
                 **pipeline_options: Any) -> Iterator[Row]:
    """Rows as frames are analysed: for long videos, nothing is held beyond the current frame.

    The source is opened and the models loaded at once (a bad source or a missing model raises
    here, not at the first `next`); stop iterating (or `close()` the iterator) to release them.
    """
    source_options, pipe_options = _split(dict(pipeline_options))
    run = RunRows.open(source, model=model, store=_store(store), **source_options, **pipe_options)

    def rows() -> Iterator[Row]:
        with run:
            columns = run.columns
            for frame_rows in run.frames(max_frames, on_bad_frame=_warn_bad_frame):
                for row in frame_rows:
                    yield typed_row(row, columns)

    return rows()


def analyze(source: str | int | Path, model: str | None = DEFAULT_MODEL, max_frames: int | None = None,
            *, as_frame: bool = False, store: ModelStore | str | Path | None = None,
            **pipeline_options: Any) -> list[Row] | Any:
    """Every row of `occlufer run --source SOURCE [--model MODEL] [--max-frames N]`, as a list
    of dicts, or with `as_frame=True` as a pandas DataFrame (pandas is optional)."""
    if as_frame:
        pandas = _pandas()
    run_rows = iter_analyze(source, model, max_frames, store=store, **pipeline_options)
    rows = list(run_rows)
    if not as_frame:
        return rows
    return pandas.DataFrame.from_records(rows, columns=_columns(model, store) if not rows else None)


def _columns(model: str | None, store: ModelStore | str | Path | None) -> list[str]:
    from app.session_rows import SessionSchema, expression_classes

    store = _store(store)
    model = store.resolve_expression_model(model)
    return SessionSchema(expression_classes(store, [model] if model else [])).columns


def _pandas():
    try:
        import pandas
    except ImportError:
        raise OccluferError("as_frame=True needs pandas, which occlufer does not install: "
                            f"{Path(sys.executable).name} -m pip install pandas "
                            "(or leave as_frame off for a list of dicts)") from None
    return pandas


class ImageAnalyzer:
    """One loaded pipeline for many single images (loading the models once; a notebook that
    classifies a folder of photos should not reload them per photo). Each image is analysed
    on its own: no tracking or smoothing carries over from the previous one."""

    def __init__(self, model: str | None = DEFAULT_MODEL, *,
                 store: ModelStore | str | Path | None = None, **pipeline_options: Any) -> None:
        from app.pipeline.pipeline import build_pipeline
        from app.run_rows import pipeline_kwargs
        from app.session_rows import SessionSchema, expression_classes

        store = _store(store)
        model = store.resolve_expression_model(model)
        self.model = model
        self.pipeline = build_pipeline(store, **pipeline_kwargs(model, pipeline_options))
        self.schema = SessionSchema(expression_classes(store, [model] if model else []))

    def __call__(self, image: np.ndarray, color: Literal["bgr", "rgb"] = "bgr") -> list[Row]:
        from app.pipeline.records import Frame
        from app.pipeline.smoothing import ExpressionSmoother
        from app.pipeline.tracker import IouTracker

        image = np.asarray(image)
        if color not in ("bgr", "rgb"):
            raise ValueError(f"color must be 'bgr' or 'rgb', not {color!r}")
        if color == "rgb" and image.ndim == 3 and image.shape[2] >= 3:
            image = np.ascontiguousarray(image[..., [2, 1, 0]])  # alpha, if any, is dropped
        self.pipeline.reset()
        self.pipeline.tracker = IouTracker()  # track ids start at 1 for every image
        result = self.pipeline.process(Frame(image=image, index=0, timestamp=time.time()))
        rows = self.schema.rows(ExpressionSmoother().update(result), self.model)
        return [typed_row(row, self.schema.columns) for row in rows]


_LAST_ANALYZER: dict[tuple, ImageAnalyzer] = {}


def analyze_image(image: np.ndarray, model: str | None = DEFAULT_MODEL,
                  color: Literal["bgr", "rgb"] = "bgr", *,
                  store: ModelStore | str | Path | None = None,
                  **pipeline_options: Any) -> list[Row]:
    """The rows of one frame (one per face, or one `faces = 0` row): `image` is uint8 BGR (as
    OpenCV reads it) or RGB (as PIL, matplotlib and scikit-image give it) with
    `color="rgb"`; gray works too. The models of the last call stay loaded for the next."""
    where = (str(store.root), str(store.manifest_path)) if isinstance(store, ModelStore) else str(store)
    key = (model, where, tuple(sorted(pipeline_options.items())))
    analyzer = _LAST_ANALYZER.get(key)
    if analyzer is None:
        _LAST_ANALYZER.clear()
        analyzer = ImageAnalyzer(model, store=store, **pipeline_options)
        _LAST_ANALYZER[key] = analyzer
    return analyzer(image, color)
