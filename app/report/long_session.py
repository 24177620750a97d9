"""A long session made of a real one, for timing `occlufer report` (BENCHMARKS.md).

    python -m app.report.long_session demo.csv --rows 54000 --out long.csv

Repeats the rows of a real recording, renumbering frames and moving the clocks on, so the
result has the shape of a 30-minute recording (54,000 rows at 30 fps for one face) with real
values in every column. Why not record 30 minutes: the report's cost depends on the rows, not
on where they came from, and a real 30-minute run costs half an hour of CPU.
"""

from __future__ import annotations

import argparse
import csv
from datetime import datetime, timedelta
from pathlib import Path


def repeat_session(source: Path, rows: int, out: Path) -> int:
    with open(source, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, real = list(reader.fieldnames or []), list(reader)
    frames = sorted({int(r["frame"]) for r in real})
    span = len(frames)
    first = datetime.fromisoformat(real[0]["timestamp"])
    last = datetime.fromisoformat(real[-1]["timestamp"])
    wall = (last - first) / max(span - 1, 1) * span
    step = float(real[1]["source_time"] or 0) - float(real[0]["source_time"] or 0) if len(real) > 1 else 0
    written = 0
    with open(out, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        lap = 0
        while written < rows:
            for row in real:
                if written == rows:
                    break
                copy = dict(row)
                copy["frame"] = str(int(row["frame"]) + lap * span)
                if row["source_time"]:
                    copy["source_time"] = f"{float(row['source_time']) + lap * span * step:.3f}"
                stamp = datetime.fromisoformat(row["timestamp"]) + lap * wall
                copy["timestamp"] = stamp.isoformat(timespec="milliseconds")
                writer.writerow(copy)
                written += 1
            lap += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a real session CSV")
    parser.add_argument("--rows", type=int, default=54000)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    print(f"wrote {repeat_session(args.source, args.rows, args.out)} rows to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
