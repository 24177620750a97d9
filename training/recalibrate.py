"""Fit a temperature for shipped classifiers that have none:
`python -m training.recalibrate MODEL [MODEL ...] --data-root DATA_ROOT --valid-sets VALID_SETS`.

Issue 14 asks that every shipped model's `probs` be calibrated wherever they are read, and that
under heavy occlusion a calibrated model be less sure, not confidently wrong. Models trained
since then get a temperature from the trainer's finalisation; the ones trained before (the
`fast` recipes) were shipped without one. This command gives them one, folded into the shipped
graph by `exporters.temperature`.

What the temperature is fitted on, and why: a temperature fitted by NLL on clean FER2013Valid
alone (Guo et al. 2017) sharpens these networks (they were trained with label smoothing and
are under-confident on clean faces, T ~ 0.75), and the same sharpening makes them confidently
wrong on masked or blurred faces: measured on the first three models, worst occluded test-set
ECE 14-28 %. Calibration fitted on clean data is known not to hold under distribution shift
(Ovadia et al., NeurIPS 2019); Tomani et al. ("Post-hoc uncertainty calibration for domain
drift scenarios", CVPR 2021) fit the temperature on validation data perturbed with shifts of
several kinds instead. We follow that: the T minimising NLL over FER2013Valid clean (half the
weight) and its copies under each of occlufer's occluders and camera degradations (the other
half, each kind weighted equally), built from the validation split with their own seed
(`python -m training.occlusion --split valid --seed 1`). Test sets are only scored. Both fits
are reported beside the shipped file's own probabilities, on every test set and on the
held-out image changes of `training.foreign_shifts`, which no generator draws.

Only a temperature, no logit adjustment: a temperature changes no arg-max, so every accuracy a
card and BENCHMARKS.md report for these files stays true. A prior-guided model (ORSANet) is fed
the priors the app gives it (`runtime`). `--measure-only` scores any model, one already
calibrated included (its logits read as T_old * log p), without writing anything; `--refit`
replaces the temperature of a model that was calibrated when it was trained (on clean
FER2013Valid, before this rule) by this fit, keeping its logit adjustment.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DatasetError, OccluferError
from exporters.temperature import TemperatureError, add_temperature, existing_posthoc, is_calibrated
from training.calibration import (expected_calibration_error, fit_calibration, fit_temperature,
                                  nll, softmax)
from training.cli import add_manifest_arg, resolve_model_file
from training.data.classes import EMOTIONS8

VERIFY_FACES = 64
#: how the validation copies for the fit are built (`training.evaluate.valid_copies`)
VALID_SETS_COMMAND = ("python -m training.occlusion --data-root DATA_ROOT --split valid "
                      "--seed 1 --out VALID_SETS")


@dataclass
class LabeledSet:
    name: str
    images: np.ndarray
    labels: np.ndarray
    names: list[str]


@dataclass
class Recalibration:
    """What one model's recalibration measured; the card section is written from it."""

    name: str
    temperature_before: float
    temperature_clean: float
    temperature: float  # the one folded in: clean + shifted validation
    valid: dict[str, dict[str, float]]  # "clean" / "shifted" -> nll and ece per temperature
    test: dict[str, dict[str, float]] = field(default_factory=dict)  # set -> acc, ece per T
    old_sha256: str = ""
    new_sha256: str = ""
    path: Path | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path) if self.path else None
        return data


def split_sets(data_root: Path, split: str, kinds: Sequence[str], sets_dir: Path | None,
               limit: int | None) -> list[LabeledSet]:
    """The clean split and its copies under `kinds`: for validation, built where missing
    (`training.evaluate.shifted_valid_images`); for test, every copy must exist."""
    from training.data import load_split
    from training.evaluate import occluded_root, shifted_valid_images

    data = load_split("ferplus", data_root, split, "majority", progress=False)
    clean = LabeledSet("clean", data.images[:limit], data.labels[:limit], list(data.names)[:limit])
    sets = [clean]
    if split == "valid":
        sets += [LabeledSet(kind, images, clean.labels, clean.names)
                 for kind, images in shifted_valid_images(data_root, clean.names, sets_dir)
                 if kind in kinds]
        return sets
    for kind in kinds:
        copy = load_split("ferplus", occluded_root(data_root, kind, split, sets_dir, build=False),
                          split, "majority", progress=False)
        sets.append(LabeledSet(kind, copy.images[:limit], copy.labels[:limit],
                               list(copy.names)[:limit]))
    return sets


def runtime_priors(session, spec, images: np.ndarray) -> dict[str, np.ndarray] | None:
    """The priors the app feeds a prior-guided model for `images` (None for the others)."""
    from app.pipeline.expression import prior_input_types
    from training.evaluate import evaluation_priors

    dtypes = prior_input_types(session)
    if not dtypes:
        return None
    priors = evaluation_priors("runtime", list(dtypes), spec.size, images, dataset="ferplus",
                               split="valid", names=[], clean_root=Path("."),
                               occluded_root_dir=None) or {}
    return {k: np.asarray(v, dtypes[k]) for k, v in priors.items()}


def set_logits(session, spec, temperature_before: float, images: np.ndarray, desc: str
               ) -> np.ndarray:
    """T_old * log(probs): the file's logits up to a per-face constant (its logit bias
    included), what a temperature divides."""
    from training.evaluate import predict

    probs = predict(session, images, spec, desc=desc,
                    priors=runtime_priors(session, spec, images))
    return temperature_before * np.log(np.clip(probs.astype(np.float64), 1e-30, 1.0))


def recalibrate(name: str, data_root: Path, valid_sets: Path | None, *, out_dir: Path,
                manifest: Path | None = None, register: bool = True,
                measure_only: bool = False, refit: bool = False, occlusion_dir: Path | None = None,
                shifts: Sequence[str] | None = None, val_limit: int | None = None,
                test_limit: int | None = None, code: str | None = None,
                command: str | None = None) -> Recalibration:
    """Fit both temperatures, score them on every test set, and (unless `measure_only`) fold
    the clean + shifted one into the file, card it and register it."""
    import onnx

    from app.pipeline.preprocess import prepare_batch
    from app.runtime.providers import create_session
    from training.evaluate import available_test_sets, model_metadata, sha256_file
    from training.foreign_shifts import SHIFTS, shifted
    from training.occlusion import EVALUATED_SETS
    from training.trainer import git_commit

    source = resolve_model_file(name, manifest)
    posthoc = existing_posthoc(onnx.load(str(source), load_external_data=False))
    if is_calibrated(posthoc) and not (measure_only or refit):
        raise OccluferError(f"{name} already has a temperature {posthoc.get('temperature')} "
                            "(fitted when it was trained); --refit replaces it by this fit, "
                            "--measure-only scores it")
    t_before = float(posthoc.get("temperature", 1.0))
    session = create_session(source, "cpu")
    spec, classes, _ = model_metadata(session)

    kinds = list(EVALUATED_SETS)
    valid = split_sets(data_root, "valid", kinds, valid_sets, val_limit)
    if tuple(classes) != EMOTIONS8:
        raise OccluferError(f"{name} has classes {classes}, FERPlus {EMOTIONS8}")
    z_valid = [set_logits(session, spec, t_before, s.images, f"{name} valid {s.name}")
               for s in valid]
    t_clean = fit_temperature(z_valid[0], valid[0].labels)
    # the trainer's own fit, with no logit adjustment (the file keeps whatever bias it has)
    t_shift = fit_calibration(z_valid[0], valid[0].labels, np.full(len(classes), 1.0),
                              classes, "none", adjust=False,
                              shifted=[(z, s.labels) for z, s in zip(z_valid[1:], valid[1:])]
                              ).temperature
    temps = {"shipped": t_before, "clean_fit": t_clean, "shift_fit": t_shift}

    def scores(z: np.ndarray, y: np.ndarray) -> dict[str, float]:
        row = {"accuracy": float(np.mean(z.argmax(1) == y) * 100.0), "n": int(len(y))}
        for key, t in temps.items():
            row[f"ece_{key}"] = expected_calibration_error(softmax(z / t), y)["ece"]
            row[f"nll_{key}"] = nll(z, y, t)
        return row

    result = Recalibration(name=name, temperature_before=t_before, temperature_clean=t_clean,
                           temperature=t_shift,
                           valid={"clean": scores(z_valid[0], valid[0].labels),
                                  "shifted": scores(np.concatenate(z_valid[1:]),
                                                    np.concatenate([s.labels for s in valid[1:]]))})
    test_kinds = available_test_sets(data_root, kinds, occlusion_dir)
    for s in split_sets(data_root, "test", test_kinds, occlusion_dir, test_limit):
        result.test[s.name] = scores(set_logits(session, spec, t_before, s.images,
                                                f"{name} test {s.name}"), s.labels)
        if s.name == "clean":
            for shift in (SHIFTS if shifts is None else shifts):
                z = set_logits(session, spec, t_before, shifted(s.images, shift),
                               f"{name} test {shift}")
                result.test[f"held-out {shift}"] = scores(z, s.labels)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.old_sha256 = sha256_file(source)
    if not measure_only:
        faces = valid[0].images[:VERIFY_FACES]
        verify = {session.get_inputs()[0].name: prepare_batch(list(faces), spec),
                  **(runtime_priors(session, spec, faces) or {})}
        result.path = add_temperature(source, out_dir / f"{name}.onnx", t_shift, verify,
                                      refit=refit)
        result.new_sha256 = sha256_file(result.path)
    (out_dir / f"{name}.json").write_text(json.dumps(result.to_json(), indent=1))
    if register and not measure_only:
        register_recalibrated(result, manifest, code=code or git_commit(),
                              command=command or default_command([name], refit))
    return result


def default_command(names: Sequence[str], refit: bool = False) -> str:
    return (f"python -m training.recalibrate {' '.join(names)} --data-root DATA_ROOT "
            f"--valid-sets VALID_SETS{' --refit' if refit else ''}")


def worst(result: Recalibration, key: str, held_out: bool) -> tuple[str, float]:
    rows = {k: v for k, v in result.test.items()
            if k != "clean" and k.startswith("held-out") == held_out}
    if not rows:
        return "–", float("nan")
    name = max(rows, key=lambda k: rows[k][key])
    return name, rows[name][key]


def alternative_sentence(result: Recalibration) -> str:
    """The card's sentence on the usual, clean-only fit it shows beside the shipped one."""
    shifted = [v for k, v in result.test.items() if k != "clean"]
    lower = sum(v["ece_shift_fit"] < v["ece_clean_fit"] for v in shifted)
    return (f"The usual fit, on clean FER2013Valid alone (T = {result.temperature_clean:.4f}), "
            "is shown beside it: it is the NLL optimum on clean validation faces, and on "
            f"{len(shifted) - lower} of the {len(shifted)} occluded, degraded and held-out test "
            "sets below it has the lower ECE.")


def card_section(result: Recalibration, *, code: str, command: str) -> list[str]:
    from app.bench import cpu_name

    v = result.valid
    lines = [
        "",
        "## Temperature (fitted after export; issue 14)",
        "",
        (f"This file was first shipped without a post-hoc step (sha256 `{result.old_sha256}`). "
         if result.temperature_before == 1.0 else
         f"This file was shipped with T = {result.temperature_before:.4f}, fitted on clean "
         f"FER2013Valid when it was trained (sha256 `{result.old_sha256}`); that temperature "
         "is replaced here (its logit adjustment is kept). ")
        + f"`exporters/temperature.py` folded a temperature T = {result.temperature:.4f} into its "
        "graph (`probs = softmax((logits + b) / T)`), fitted by NLL on FER2013Valid clean (half "
        "the weight) and its copies under occlufer's occluders and camera degradations (the "
        "other half), as `training/recalibrate.py` explains. No arg-max changes, so the "
        "accuracies above still hold; only how sure `probs` are. The CAM and every other output "
        "are unchanged, and `training.distill.raw_posterior` undoes T, so distilling from this "
        "file gives the targets the earlier file gave.",
        "",
        alternative_sentence(result),
        "",
        f"| FER2013Valid | ECE before (T = {result.temperature_before:.3g}) | ECE, clean fit | "
        "ECE, shipped fit |",
        "|---|---|---|---|",
        f"| clean | {v['clean']['ece_shipped']:.2f} % | {v['clean']['ece_clean_fit']:.2f} % | "
        f"{v['clean']['ece_shift_fit']:.2f} % |",
        f"| occluded and degraded copies | {v['shifted']['ece_shipped']:.2f} % | "
        f"{v['shifted']['ece_clean_fit']:.2f} % | {v['shifted']['ece_shift_fit']:.2f} % |",
        "",
        "FERPlus test (n = 3,137 each; the `held-out` rows are `training.foreign_shifts`' image "
        "changes, which no occlufer generator draws):",
        "",
        "| test set | accuracy | ECE before | ECE, clean fit | ECE, shipped fit |",
        "|---|---|---|---|---|",
    ]
    for label, row in result.test.items():
        lines.append(f"| {label} | {row['accuracy']:.2f} % | {row['ece_shipped']:.2f} % | "
                     f"{row['ece_clean_fit']:.2f} % | {row['ece_shift_fit']:.2f} % |")
    lines += [
        "",
        f"- Command: `{command}` (VALID_SETS built by `{VALID_SETS_COMMAND}`)",
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

    assert result.path is not None
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


def summary_line(result: Recalibration) -> dict[str, Any]:
    out: dict[str, Any] = {"model": result.name,
                           "T": [round(result.temperature_before, 4),
                                 round(result.temperature_clean, 4), round(result.temperature, 4)]}
    for key in ("ece_shipped", "ece_clean_fit", "ece_shift_fit"):
        clean = result.test.get("clean", {}).get(key, float("nan"))
        _, ours = worst(result, key, held_out=False)
        _, foreign = worst(result, key, held_out=True)
        out[key] = [round(clean, 2), round(ours, 2), round(foreign, 2)]
    out["sha256"] = result.new_sha256 or None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="shipped expression models without a temperature")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--valid-sets", type=Path, default=None,
                        help="the validation copies to fit on (built there when missing, as "
                             f"`{VALID_SETS_COMMAND}` does; default: beside the test sets)")
    parser.add_argument("--occlusion-dir", type=Path, default=None,
                        help="the test sets (default: the store's occlusion_sets)")
    parser.add_argument("--out", type=Path, default=Path("runs") / "recalibrate")
    parser.add_argument("--measure-only", action="store_true",
                        help="score both fits without writing a file (any model)")
    parser.add_argument("--refit", action="store_true",
                        help="replace the temperature of a model calibrated at training time")
    parser.add_argument("--no-register", action="store_true")
    add_manifest_arg(parser)
    args = parser.parse_args(argv)
    from training.trainer import git_commit

    code, command = git_commit(), default_command(args.models, args.refit)
    started = time.perf_counter()
    try:
        for name in args.models:
            result = recalibrate(name, args.data_root, args.valid_sets, out_dir=args.out,
                                 manifest=args.manifest, register=not args.no_register,
                                 measure_only=args.measure_only, refit=args.refit,
                                 occlusion_dir=args.occlusion_dir, code=code, command=command)
            print(json.dumps(summary_line(result)), flush=True)
    except (DatasetError, OccluferError, TemperatureError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
