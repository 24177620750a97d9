"""app.api against the CLI: the same source and options give the same rows as `occlufer run`.

Both sides really run (a subprocess for the CLI, in-process for the API) on the built-in demo,
so a change to the defaults or to the code path of either shows here. Only what cannot repeat
between two runs is left out of the comparison: the wall-clock `timestamp` and the measured
`<stage>_ms` latencies.
"""

from __future__ import annotations

import csv
import itertools
import os
import subprocess
import sys
from pathlib import Path

import pytest

from app import REPO_ROOT
from app.api import analyze, analyze_image, iter_analyze
from app.errors import OccluferError
from app.session_csv import typed_row


def _cli_rows(home: Path, out: Path, *args: str) -> tuple[list[str], list[dict]]:
    env = {**os.environ, "OCCLUFER_HOME": str(home)}
    done = subprocess.run([sys.executable, "-m", "app.cli", "run", "--out", str(out), *args],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    with out.open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = [typed_row(r, reader.fieldnames) for r in reader]
    return list(reader.fieldnames), rows


def _repeatable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "timestamp" and not k.endswith("_ms")}


@pytest.fixture(scope="module")
def home(retinaface_onnx) -> Path:
    return retinaface_onnx.parent.parent


def test_analyze_gives_the_rows_of_occlufer_run(home, model_store, tmp_path):
    frames = 40
    columns, cli = _cli_rows(home, tmp_path / "cli.csv", "--source", "demo", "--model",
                             "resnet18_fast", "--max-frames", str(frames), "--device", "cpu",
                             "--threads", "1")
    api = analyze("demo", model="resnet18_fast", max_frames=frames, store=model_store,
                  device="cpu", threads=1)
    assert len(api) == len(cli) >= frames  # at least one row per frame
    assert [list(r) for r in api] == [columns] * len(api), "exactly the CSV's keys, in order"
    assert [r["label"] for r in api] == [r["label"] for r in cli]
    assert {r["label"] for r in api} - {None}, "the demo face is classified"
    assert [_repeatable(r) for r in api] == [_repeatable(r) for r in cli]
    assert all(isinstance(r["frame"], int) and isinstance(r["frame_ms"], float) for r in api)


def test_defaults_are_the_defaults_of_occlufer_run(home, model_store, tmp_path):
    """No model, no options on either side: whatever `occlufer run` defaults to, analyze too."""
    columns, cli = _cli_rows(home, tmp_path / "cli.csv", "--source", "demo", "--max-frames", "12")
    api = analyze("demo", max_frames=12, store=model_store)
    assert list(api[0]) == columns
    assert [_repeatable(r) for r in api] == [_repeatable(r) for r in cli]


def test_iter_analyze_streams_rows_of_an_endless_source(model_store):
    rows = iter_analyze("demo", loop=True, store=model_store, device="cpu", threads=1)
    first = list(itertools.islice(rows, 5))  # an endless demo: only a generator can return
    rows.close()
    assert [r["frame"] for r in first] == [0, 1, 2, 3, 4]
    assert all(r["faces"] == 1 and r["track_id"] == 1 for r in first)


def test_a_bad_source_fails_at_the_call_not_at_the_first_row(model_store, tmp_path):
    with pytest.raises(OccluferError, match="Source not found"):
        iter_analyze(str(tmp_path / "missing.mp4"), store=model_store)


def test_analyze_image_bgr_and_rgb_give_the_same_face(model_store, astronaut_bgr):
    bgr = analyze_image(astronaut_bgr, model="resnet18_fast", store=model_store, device="cpu")
    rgb = analyze_image(astronaut_bgr[..., ::-1], model="resnet18_fast", color="rgb",
                        store=model_store, device="cpu")
    assert len(bgr) == 1 and bgr[0]["faces"] == 1 and bgr[0]["label"]
    assert _repeatable(bgr[0]) == _repeatable(rgb[0])
    x1, y1, x2, y2 = (bgr[0][k] for k in ("x1", "y1", "x2", "y2"))
    assert abs(x1 - 178) < 15 and abs(y1 - 57) < 20 and abs(x2 - 273) < 15 and abs(y2 - 177) < 20
    # a colour mix-up would change what the classifier sees: unswapped RGB is another input
    swapped = analyze_image(astronaut_bgr[..., ::-1].copy(), model="resnet18_fast",
                            store=model_store, device="cpu")
    assert swapped[0]["p_neutral"] != bgr[0]["p_neutral"]


def test_as_frame_without_pandas_says_how_to_install_it(model_store):
    try:
        import pandas  # noqa: F401
    except ImportError:
        with pytest.raises(OccluferError, match="pip install pandas"):
            analyze("demo", max_frames=2, as_frame=True, store=model_store)
    else:
        frame = analyze("demo", max_frames=2, as_frame=True, store=model_store)
        assert list(frame["frame"]) == [0, 1]


def test_the_readme_example_runs(home):
    """The README's API example, verbatim, as a user runs it from the repository root."""
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split("<!-- api-example -->")[1].split("<!-- /api-example -->")[0]
    code = block.split("```python")[1].split("```")[0]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO_ROOT, env={**os.environ, "OCCLUFER_HOME": str(home)},
                          timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("150 happiness") and lines[1].startswith("frame ")
    assert lines[2] == lines[3] != ""  # the same label from the BGR and the RGB photo
