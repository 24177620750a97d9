"""Fit a temperature for shipped classifiers that have none:
`python -m training.recalibrate MODEL [MODEL ...] --data-root DATA_ROOT`.

Issue 14 asks that every shipped model's `probs` be calibrated wherever they are read. Models
trained since then get their temperature from the trainer's finalisation
(`training.calibration.fit_calibration`); the ones trained before (the `fast` recipes) were
shipped without it. This command gives them the same step, fitted the same way: the T that
minimises NLL on FER2013Valid (majority protocol, never test), by
`training.calibration.fit_temperature`, folded into the shipped graph by
`exporters.temperature`. Only a temperature, no logit adjustment: a temperature changes no
arg-max, so every accuracy a card and BENCHMARKS.md already report for these files stays true,
while a class-prior adjustment would change them and belongs to a retraining with the long
recipe. A prior-guided model (ORSANet) is fed the priors the app gives it (`runtime`).

The file keeps its name; its card gains a section with T, the validation NLL and ECE before and
after, the test accuracy and ECE of the new file on every test set on disk, the previous sha256
and the command; the manifest entry gets the new sha256.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DatasetError, OccluferError
from exporters.temperature import TemperatureError, add_temperature, existing_posthoc, is_calibrated
from training.calibration import expected_calibration_error, fit_temperature, nll, softmax
from training.cli import add_manifest_arg, resolve_model_file

VERIFY_FACES = 64


@dataclass
class Recalibration:
    """What one model's recalibration measured; the card section is written from it."""

    name: str
    temperature: float
    valid_n: int
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    old_sha256: str
    new_sha256: str
    path: Path
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)


def valid_feeds(session, images: np.ndarray, names: Sequence[str], data_root: Path
                ) -> dict[str, np.ndarray] | None:
    """Priors for a prior-guided model, as the app computes them (None for the others)."""
    from app.pipeline.expression import prior_input_types
    from training.evaluate import evaluation_priors, model_metadata

    extra = list(prior_input_types(session))
    if not extra:
        return None
    spec = model_metadata(session)[0]
    return evaluation_priors("runtime", extra, spec.size, images, dataset="ferplus",
                             split="valid", names=names, clean_root=data_root,
                             occluded_root_dir=None)


def recalibrate(name: str, data_root: Path, *, out_dir: Path, manifest: Path | None = None,
                register: bool = True, occlusion_dir: Path | None = None,
                val_limit: int | None = None, test_limit: int | None = None,
                code: str | None = None, command: str | None = None) -> Recalibration:
    """Fit, fold, verify, score, card and (optionally) register one model's temperature."""
    import onnx

    from app.pipeline.expression import prior_input_types
    from app.pipeline.preprocess import prepare_batch
    from app.runtime.providers import create_session
    from training.data import load_split
    from training.evaluate import evaluate, model_metadata, occluded_root, predict, sha256_file
    from training.occlusion import EVALUATED_SETS
    from training.trainer import git_commit

    source = resolve_model_file(name, manifest)
    posthoc = existing_posthoc(onnx.load(str(source), load_external_data=False))
    if is_calibrated(posthoc):
        raise OccluferError(f"{name} already has a temperature {posthoc.get('temperature')} "
                            "(fitted when it was trained); nothing to recalibrate")
    session = create_session(source, "cpu")
    spec, classes, _ = model_metadata(session)
    valid = load_split("ferplus", data_root, "valid", "majority")
    if tuple(classes) != tuple(valid.classes):
        raise OccluferError(f"{name} has classes {classes}, FERPlus {valid.classes}")
    images, labels, names = valid.images, valid.labels, list(valid.names)
    if val_limit is not None:
        images, labels, names = images[:val_limit], labels[:val_limit], names[:val_limit]
    priors = valid_feeds(session, images, names, data_root)
    probs = predict(session, images, spec, desc=f"{name} valid", priors=priors)
    logits = np.log(np.clip(probs.astype(np.float64), 1e-30, 1.0))
    temperature = fit_temperature(logits, labels)

    out_dir = Path(out_dir)
    dtypes = prior_input_types(session)
    verify = {session.get_inputs()[0].name: prepare_batch(list(images[:VERIFY_FACES]), spec)}
    verify.update({k: np.asarray(v[:VERIFY_FACES], dtypes[k]) for k, v in (priors or {}).items()})
    target = add_temperature(source, out_dir / f"{name}.onnx", temperature, verify)

    reports: dict[str, dict[str, Any]] = {}
    for kind in [None, *EVALUATED_SETS]:
        if kind is not None:
            try:
                occluded_root(data_root, kind, "test", occlusion_dir, build=False)
            except DatasetError:
                continue
        label = kind or "clean"
        reports[label] = evaluate(target, "ferplus", data_root, "test", occlusion=kind,
                                  occlusion_dir=occlusion_dir, limit=test_limit,
                                  report_dir=out_dir / "reports" / name / f"test_{label}",
                                  build_occluded=False)
    result = Recalibration(
        name=name, temperature=temperature, valid_n=len(labels),
        nll_before=nll(logits, labels), nll_after=nll(logits, labels, temperature),
        ece_before=expected_calibration_error(probs, labels)["ece"],
        ece_after=expected_calibration_error(softmax(logits / temperature), labels)["ece"],
        old_sha256=sha256_file(source), new_sha256=sha256_file(target), path=target,
        reports=reports)
    if register:
        register_recalibrated(result, manifest, code=code or git_commit(),
                              command=command or default_command([name]))
    return result


def default_command(names: Sequence[str]) -> str:
    return f"python -m training.recalibrate {' '.join(names)} --data-root DATA_ROOT"


def card_section(result: Recalibration, *, code: str, command: str) -> list[str]:
    from app.bench import cpu_name

    lines = [
        "",
        "## Temperature (fitted after export; issue 14)",
        "",
        f"This file was first shipped without a post-hoc step (sha256 `{result.old_sha256}`). "
        f"`exporters/temperature.py` folded a temperature T = {result.temperature:.4f} into its "
        "graph (`probs = softmax(logits / T)`), fitted by NLL on FER2013Valid "
        f"(n = {result.valid_n}, majority protocol). No arg-max changes, so the accuracies above "
        "still hold; only how sure `probs` are. The CAM and every other output are unchanged, "
        "and `training.distill.raw_posterior` undoes T, so distilling from this file gives the "
        "targets the earlier file gave.",
        "",
        "| FER2013Valid | before | after |",
        "|---|---|---|",
        f"| NLL | {result.nll_before:.4f} | {result.nll_after:.4f} |",
        f"| ECE (15 bins) | {result.ece_before:.2f} % | {result.ece_after:.2f} % |",
        "",
        "The new file on the test sets (`occlufer eval ... --occlusion all`):",
        "",
        "| test set | accuracy | ECE | mean confidence | n |",
        "|---|---|---|---|---|",
    ]
    for label, report in result.reports.items():
        lines.append(f"| {label} | {report['accuracy']:.2f} % | {report['ece']:.2f} % | "
                     f"{report['mean_confidence']:.1f} % | {report['n']} |")
    lines += [
        "",
        f"- Command: `{command}`",
        f"- Code: git commit {code}",
        f"- Hardware: {cpu_name()}",
        "",
    ]
    return lines


def register_recalibrated(result: Recalibration, manifest: Path | None, *, code: str,
                          command: str) -> Path:
    """The new file and updated card into the store's assets, then the entry's new sha256."""
    from app.runtime.store import default_manifest_path
    from exporters.manifest import copy_into_assets, read_manifest, register_model_entry

    manifest_path = Path(manifest) if manifest else default_manifest_path()
    entry = dict(read_manifest(manifest_path)["models"][result.name])
    card_path = manifest_path.parent / entry.get("card", f"cards/{result.name}.md")
    card = card_path.read_text() if card_path.is_file() else f"# {result.name}\n"
    if "## Temperature (fitted after export" in card:
        raise OccluferError(f"{card_path} already has a temperature section")
    card = card.replace(result.old_sha256, result.new_sha256)
    new_card = result.path.with_suffix(".md")
    new_card.write_text(card.rstrip("\n") + "\n" + "\n".join(card_section(
        result, code=code, command=command)))
    copy_into_assets(result.name, result.path, new_card, manifest_path)
    entry["sha256"] = result.new_sha256
    entry["file"] = f"models/{result.name}.onnx"
    return register_model_entry(result.name, entry, manifest_path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped expression models without a temperature")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--out", type=Path, default=Path("runs") / "recalibrate")
    parser.add_argument("--occlusion-dir", type=Path, default=None)
    parser.add_argument("--no-register", action="store_true")
    add_manifest_arg(parser)
    args = parser.parse_args(argv)
    from training.trainer import git_commit

    code, command = git_commit(), default_command(args.models)
    started = time.perf_counter()
    try:
        for name in args.models:
            result = recalibrate(name, args.data_root, out_dir=args.out, manifest=args.manifest,
                                 register=not args.no_register, occlusion_dir=args.occlusion_dir,
                                 code=code, command=command)
            worst = max((r["ece"] for k, r in result.reports.items() if k != "clean"),
                        default=float("nan"))
            print(json.dumps({"model": name, "temperature": round(result.temperature, 4),
                              "valid_ece": [round(result.ece_before, 2),
                                            round(result.ece_after, 2)],
                              "test_clean_ece": round(result.reports["clean"]["ece"], 2),
                              "worst_other_ece": round(worst, 2),
                              "sha256": result.new_sha256}))
    except (DatasetError, OccluferError, TemperatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
