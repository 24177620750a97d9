"""Session recording to CSV that survives a crash.

Rows are buffered by Python's file object and pushed to disk (flush + fsync) at least every
`flush_seconds`, so a crash or SIGKILL loses at most that much; every row is written whole,
so the file always parses. A full disk raises RecordingError; what was flushed stays.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.errors import RecordingError


class CsvRecorder:
    def __init__(self, path: Path, columns: Sequence[str], flush_seconds: float = 1.0) -> None:
        self.path, self.columns, self.flush_seconds = Path(path), list(columns), flush_seconds
        self.rows = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "w", newline="", encoding="utf-8")
            self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="raise")
            self._writer.writeheader()
            self._sync()
        except OSError as exc:
            raise RecordingError(f"Cannot write recording {self.path}: {exc.strerror or exc}") from exc
        self._last_flush = time.monotonic()

    def write(self, row: dict[str, Any]) -> None:
        try:
            self._writer.writerow(row)
            self.rows += 1
            if time.monotonic() - self._last_flush >= self.flush_seconds:
                self._sync()
        except OSError as exc:
            raise RecordingError(
                f"Recording to {self.path} stopped: {exc.strerror or exc} "
                f"(rows up to the last flush, about {self.flush_seconds:g} s ago, are kept)"
            ) from exc

    def _sync(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._sync()
        except OSError as exc:
            raise RecordingError(f"Cannot finish recording {self.path}: {exc}") from exc
        finally:
            try:
                self._fh.close()
            except OSError:
                pass

    def __enter__(self) -> "CsvRecorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
