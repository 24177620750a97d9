"""`training.ablation`: shipped models side by side, as shipped and with the post-hoc logit
adjustment undone, on real FERPlus test faces through real ONNX sessions."""

from __future__ import annotations

from pathlib import Path

import pytest

from training import evaluate as ev
from training.ablation import markdown_table, score_sets

REPO = Path(__file__).resolve().parents[1]
PLAIN = REPO / "assets" / "models" / "resnet18_fast.onnx"   # no post-hoc step in its graph
ADJUSTED = REPO / "assets" / "models" / "resnet18_cpu.onnx"  # logit bias + temperature + mirror
N = 300


@pytest.fixture(scope="module")
def results(ferplus_root: Path):
    return score_sets([str(PLAIN), str(ADJUSTED)], ferplus_root, ["clean"], limit=N)


def test_shipped_columns_are_what_occlufer_eval_reports(results, ferplus_root, tmp_path):
    for path in (PLAIN, ADJUSTED):
        report = ev.evaluate(path, "ferplus", ferplus_root, "test", report_dir=tmp_path / path.stem,
                             limit=N)
        assert results[str(path)]["clean"]["shipped_acc"] == pytest.approx(report["accuracy"], abs=0.01)


def test_raw_equals_shipped_without_a_posthoc_step_and_differs_with_one(results):
    plain, adjusted = results[str(PLAIN)]["clean"], results[str(ADJUSTED)]["clean"]
    assert plain["raw_acc"] == plain["shipped_acc"] and plain["raw_f1"] == plain["shipped_f1"]
    # the logit adjustment moves predictions towards the rare classes: other argmaxes
    assert (adjusted["raw_acc"], adjusted["raw_f1"]) != (adjusted["shipped_acc"], adjusted["shipped_f1"])
    table = markdown_table(results, "raw_acc")
    assert "| `resnet18_cpu` |" in table and "clean" in table.splitlines()[0]
