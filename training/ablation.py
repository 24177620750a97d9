"""Two or more shipped models side by side on every test set, as shipped and with their
post-hoc logit adjustment undone: `python -m training.ablation MODEL... --data-root DIR`.

Why both: an ablation (the same recipe with and without distillation, say) asks what the
*training* changed, but each run fits its own post-hoc step on FER2013Valid
(`training.calibration`), and the tau that rule picks moves accuracy by a point or more on
its own. Undoing the logit bias and temperature from the file's metadata
(`training.distill.raw_posterior`) leaves each network's own argmax (with mirror averaging
where its graph has it), so the "raw" columns compare the networks and the "shipped" columns
compare what a user gets.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path


from app.errors import OccluferError
from app.runtime.providers import create_session
from app.runtime.store import ModelStore
from training.cli import report_results
from training.data import load_split
from training.distill import raw_posterior
from training.evaluate import classification_metrics, model_metadata, occluded_root, predict
from training.occlusion import EVALUATED_SETS


def model_path(model: str, store: ModelStore | None = None) -> Path:
    """A path to an ONNX file, or a model name from the store."""
    path = Path(model)
    if path.suffix == ".onnx" and path.is_file():
        return path
    return (store or ModelStore()).verified_path(model)


def score_sets(models: Sequence[str], data_root: Path, kinds: Sequence[str],
               occlusion_dir: Path | None = None, limit: int | None = None
               ) -> dict[str, dict[str, dict[str, float]]]:
    """{model: {set: {shipped_acc, shipped_f1, raw_acc, raw_f1}}}."""
    sessions = {m: create_session(model_path(m), "cpu") for m in models}
    results: dict[str, dict[str, dict[str, float]]] = {m: {} for m in models}
    for kind in kinds:
        root = data_root if kind == "clean" else occluded_root(data_root, kind, "test",
                                                              occlusion_dir, build=False)
        data = load_split("ferplus", root, "test", "majority")
        images, labels = data.images[:limit], data.labels[:limit]
        for model, session in sessions.items():
            spec, classes, meta = model_metadata(session)
            if tuple(classes) != tuple(data.classes):
                raise OccluferError(f"{model} has classes {classes}, FERPlus {data.classes}")
            posthoc = json.loads(meta["posthoc"]) if meta.get("posthoc") else None
            probs = predict(session, images, spec, desc=f"{Path(model).stem} {kind}")
            row = {}
            for label, p in (("shipped", probs), ("raw", raw_posterior(probs, posthoc))):
                m = classification_metrics(labels, p.argmax(1), len(classes), len(classes))
                row[f"{label}_acc"] = round(m["accuracy"], 2)
                row[f"{label}_f1"] = round(m["macro_f1"], 2)
            results[model][kind] = row
    return results


def markdown_table(results: dict[str, dict[str, dict[str, float]]], column: str) -> str:
    kinds = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for model, rows in results.items():
        lines.append(f"| `{Path(model).stem}` | "
                     + " | ".join(f"{rows[k][column]:.2f}" for k in kinds) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names from the store or .onnx files")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--occlusion-dir", type=Path, default=None)
    parser.add_argument("--sets", nargs="*", default=["clean", *EVALUATED_SETS])
    parser.add_argument("--limit", type=int, default=None, help="first N faces of each set")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    return report_results(
        lambda: score_sets(args.models, args.data_root, args.sets, args.occlusion_dir,
                           args.limit),
        lambda results: "\n".join(f"\n{column}\n" + markdown_table(results, column) for column
                                  in ("shipped_acc", "raw_acc", "shipped_f1", "raw_f1")),
        args.out)

if __name__ == "__main__":
    sys.exit(main())
