"""Publish a finished training run into a model store: `python -m training.publish RUN_DIR`.

A card must name a committed code version, so long runs train in a clean worktree (`git
worktree add`) with `--no-register`: registering there would write the worktree's own
manifest. This command does what `occlufer train` would have done at the end, from what the run
left in its folder (`best.pt`, `<name>.onnx`, `<name>.md`, `reports/test_<set>/report.json`),
into the repository it is run from (or `--manifest`). It never re-evaluates: the numbers are
the run's own, and the manifest entry is built by the trainer's `publish`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from app.errors import OccluferError
from training.cli import add_manifest_arg


class RunIncompleteError(OccluferError):
    """The run folder lacks what a finished run leaves (it may still be training)."""


def run_reports(run_dir: Path) -> dict[str, dict[str, Any]]:
    """The run's test reports in the card's order: clean, then the occluded and degraded sets."""
    from training.occlusion import EVALUATED_SETS

    reports: dict[str, dict[str, Any]] = {}
    for label in ("clean", *EVALUATED_SETS):
        path = run_dir / "reports" / f"test_{label}" / "report.json"
        if path.is_file():
            reports[label] = json.loads(path.read_text())
    if "clean" not in reports:
        raise RunIncompleteError(f"{run_dir} has no reports/test_clean/report.json: the run has "
                                 "not finished its evaluation")
    return reports


def exported_name(run_dir: Path) -> str:
    """The entry name a finished run exported under: its one `<name>.onnx` with a card beside."""
    names = sorted(p.stem for p in run_dir.glob("*.onnx") if p.with_suffix(".md").is_file())
    if len(names) != 1:
        raise RunIncompleteError(
            f"{run_dir} holds {len(names)} exported models with a card "
            f"({', '.join(names) or 'none'}): " + ("the run has not been exported" if not names
                                                   else "pass --name"))
    return names[0]


def publish_run(run_dir: Path, name: str | None = None, manifest: Path | None = None) -> Path:
    """Copy the run's ONNX and card beside `manifest` and register them; returns the manifest."""
    import torch

    from app.pipeline.preprocess import InputSpec
    from training.trainer import publish

    best = run_dir / "best.pt"
    if not best.is_file():
        raise RunIncompleteError(f"{best} does not exist: not a training run folder")
    checkpoint = torch.load(best, map_location="cpu", weights_only=False)
    recipe = checkpoint["recipe"]
    entry = name or exported_name(run_dir)
    onnx_path, card = run_dir / f"{entry}.onnx", run_dir / f"{entry}.md"
    missing = [str(p) for p in (onnx_path, card) if not p.is_file()]
    if missing:
        raise RunIncompleteError(f"{', '.join(missing)} missing: not the run's entry name")
    dataset = checkpoint.get("identity", {}).get("dataset", "ferplus")
    return publish(entry, onnx_path, card, InputSpec.from_manifest(checkpoint["input_spec"]),
                   tuple(checkpoint["classes"]), recipe.get("description", ""),
                   run_reports(run_dir), dataset, manifest)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.publish", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run folder (`occlufer train --out`)")
    parser.add_argument("--name", default=None,
                        help="the run's entry name (default: the one model it exported)")
    add_manifest_arg(parser)
    args = parser.parse_args(argv)
    try:
        path = publish_run(args.run_dir, args.name, args.manifest)
    except OccluferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"registered in {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
