"""Reading recorded sessions back: a session folder or a CSV of `occlufer run` / the app.

The columns are those of `app.session_rows` (never re-declared here). Two readers, for two
uses: `typed_row` turns one row into Python values (the API hands these to notebooks), and
`read_table` reads a whole file into one numpy array per column, chunk by chunk, so a
30-minute session (54,000 rows) is read in bounded memory (no list of row dicts).

A file that is not occlufer's, or holds no row, raises `SessionFileError` saying so. A file
whose last line was cut mid-write (the process was killed between two flushes) is read up to
the last whole row, and the table says that it was cut: a crashed session is still worth
looking at.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import SessionFileError
from app.session_rows import (CSV_NAME, DETECTION_COLUMNS, EXPRESSION_COLUMNS, INTEGER_COLUMNS,
                              METADATA_NAME, TEXT_COLUMNS, VIDEO_NAME)

Value = int | float | str | None


def cell_value(column: str, text: Any) -> Value:
    """One CSV cell as the Python value it stands for: None when empty, int for counts and
    ids, str for text columns, float otherwise. Accepts what `SessionSchema.rows` holds
    (ints, formatted strings) as well as what a CSV reader returns (strings)."""
    if text is None or text == "":
        return None
    if column in TEXT_COLUMNS:
        return str(text)
    if column in INTEGER_COLUMNS:
        return int(text)
    return float(text)


def typed_row(row: Mapping[str, Any], columns: Sequence[str]) -> dict[str, Value]:
    """Every column of `columns`, in order, typed by `cell_value` (missing cells are None:
    the CSV writes them empty)."""
    return {c: cell_value(c, row.get(c)) for c in columns}


def check_header(header: Sequence[str], path: Path | str) -> None:
    """Refuse a file that is not a session CSV, saying what occlufer's header looks like."""
    prefix = list(DETECTION_COLUMNS[:4])
    if list(header[:len(DETECTION_COLUMNS)]) != DETECTION_COLUMNS or \
            not set(EXPRESSION_COLUMNS) <= set(header):
        seen = ",".join(header[:4]) if header else "(nothing)"
        raise SessionFileError(
            f"{path} is not an occlufer session CSV: its header starts with '{seen}', where "
            f"the CSV of `occlufer run` or of the app's Record starts with '{','.join(prefix)}'")


# ------------------------------------------------------------------ whole files
@dataclass
class SessionTable:
    """A session CSV as columns: float64 arrays (NaN = empty cell) for numbers, numpy str
    arrays for text. `cut` is True when the last line was cut mid-write and left out."""

    path: Path
    columns: list[str]
    data: dict[str, np.ndarray]
    cut: bool = False

    @property
    def rows(self) -> int:
        return len(self.data[self.columns[0]]) if self.columns else 0

    def __getitem__(self, column: str) -> np.ndarray:
        return self.data[column]

    @property
    def classes(self) -> list[str]:
        """The `p_<class>` columns that hold at least one value, without their prefix."""
        return [c[2:] for c in self.columns
                if c.startswith("p_") and not np.all(np.isnan(self.data[c]))]

    @property
    def stages(self) -> list[str]:
        """The timed stages that ran (`<stage>_ms` columns holding values), `frame` last."""
        return [c[:-3] for c in self.columns
                if c.endswith("_ms") and not np.all(np.isnan(self.data[c]))]

    def seconds(self) -> np.ndarray:
        """Seconds since the session's first row: the video position where every row has one
        (a file or the demo), else the wall clock (a camera)."""
        source = self.data["source_time"]
        if len(source) and not np.any(np.isnan(source)):
            return source - source[0]
        stamps = self.data["timestamp_s"]
        return stamps - stamps[0] if len(stamps) else stamps


def _parse_time(text: str) -> float:
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return math.nan


def _columns_of(chunk: list[list[str]], columns: list[str], path: Path,
                first_line: int) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    cells = list(zip(*chunk))
    for i, column in enumerate(columns):
        values = cells[i]
        if column in TEXT_COLUMNS:
            out[column] = np.asarray(values, dtype=str)
            if column == "timestamp":
                out["timestamp_s"] = np.fromiter((_parse_time(v) for v in values), float, len(values))
            continue
        try:
            out[column] = np.fromiter((float(v) if v else math.nan for v in values), float,
                                      len(values))
        except ValueError:
            bad = next(k for k, v in enumerate(values) if v and not _is_number(v))
            raise SessionFileError(f"{path}, line {first_line + bad}: column {column} holds "
                                   f"{values[bad]!r}, not a number") from None
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def read_table(path: Path | str, chunk_rows: int = 8192) -> SessionTable:
    """Read a session CSV into columns, `chunk_rows` rows at a time (bounded memory)."""
    path = Path(path)
    if not path.is_file():
        raise SessionFileError(f"No session CSV at {path}")
    if path.stat().st_size == 0:
        raise SessionFileError(f"{path} is empty (0 bytes): the recording wrote nothing, "
                               "not even its header")
    with open(path, "rb") as raw:  # does the file end in the middle of a line?
        raw.seek(-1, 2)
        ends_whole = raw.read(1) == b"\n"
    parts: list[dict[str, np.ndarray]] = []
    cut = False
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.reader(handle)
        header = next(reader, [])
        check_header(header, path)
        columns, width = list(header), len(header)
        chunk: list[list[str]] = []
        pending: list[str] | None = None  # held back one row: the last may be cut
        line = 1
        for row in reader:
            line += 1
            if pending is not None:
                if len(pending) != width:
                    raise SessionFileError(f"{path}, line {line - 1}: {len(pending)} fields "
                                           f"where the header has {width}; the file is damaged")
                chunk.append(pending)
                if len(chunk) == chunk_rows:
                    parts.append(_columns_of(chunk, columns, path, line - len(chunk)))
                    chunk = []
            pending = row
        if pending is not None:
            if ends_whole and len(pending) == width:
                chunk.append(pending)
            else:
                cut = True  # the process stopped while writing this row: leave it out
        if chunk:
            parts.append(_columns_of(chunk, columns, path, line - len(chunk)))
    if not parts:
        raise SessionFileError(
            f"{path} holds occlufer's header but no whole row: nothing was recorded"
            + (" (its only row was cut mid-write)" if cut else ""))
    names = list(parts[0])
    data = {name: np.concatenate([p[name] for p in parts]) for name in names}
    return SessionTable(path=path, columns=columns, data=data, cut=cut)


# ------------------------------------------------------------------ session folders
@dataclass
class Session:
    """What a recording left: the table, `metadata.json` (when there is one) and the clean
    video (when one was saved), plus notes on anything missing or damaged."""

    table: SessionTable
    folder: Path
    metadata: dict[str, Any] | None = None
    video: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.folder.name if self.table.path.name == CSV_NAME else self.table.path.stem


def open_session(path: Path | str) -> Session:
    """A session folder (frames.csv, metadata.json, video.mp4) or one CSV file."""
    path = Path(path).expanduser()
    if path.is_dir():
        csv_path = path / CSV_NAME
        if not csv_path.is_file():
            raise SessionFileError(f"{path} is not a session folder: it has no {CSV_NAME} "
                                   "(the app's Record writes session-YYYYmmdd-HHMMSS/ folders)")
    elif path.is_file():
        csv_path = path
    else:
        raise SessionFileError(f"No session at {path}: give a session folder or a CSV file")
    table = read_table(csv_path)
    folder = csv_path.parent
    session = Session(table=table, folder=folder)
    meta_path = folder / METADATA_NAME
    if meta_path.is_file() and (path.is_dir() or csv_path.name == CSV_NAME):
        try:
            session.metadata = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            session.notes.append(f"{METADATA_NAME} could not be read ({exc}); models unknown")
        files = (session.metadata or {}).get("files", {})
        video = folder / files.get("video", VIDEO_NAME)
        if video.is_file():
            session.video = video
    if table.cut:
        session.notes.append(
            f"the last row of {csv_path.name} was cut mid-write (the session ended without "
            f"closing its file, e.g. a crash or kill); the {table.rows} whole rows before it "
            "are reported")
    return session
