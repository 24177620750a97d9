"""Ship an ensemble of shipped expression models as one model:
`python -m training.ensemble --name NAME --members A B ... --data-root DATA_ROOT`.

The members are the networks occlufer already trained (their files, by sha256); what this
step fits is what a trained model's finalisation fits, on FER2013Valid only: whether each
member also sees the mirror image (the trainer's rule: only for a gain of at least
`FLIP_TTA_MIN_GAIN` points, since it doubles that member's cost), then the class-prior logit
adjustment and temperature of the averaged posterior (`training.calibration`). The graph is
built and verified by `exporters.ensemble`, scored on every test set like a trained model,
and gets a card and a manifest entry, so it is selectable wherever a model is.

Why an ensemble at all: on a 2-core CPU each long training costs hours, and networks that
were trained with different architectures, teachers and seeds make different mistakes;
averaging them is the cheapest accuracy and robustness there is, at the cost of running each
member (the card measures that cost per face).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.errors import DatasetError, OccluferError
from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.providers import create_session
from exporters.ensemble import EnsembleError, Member, build_ensemble, read_member
from training.calibration import class_prior, fit_calibration
from training.data import load_split
from training.distill import raw_posterior
from training.evaluate import (available_test_sets, evaluate, model_metadata, predict,
                               sha256_file, shifted_valid_images)

MIRROR_CHOICES = ("auto", "on", "off")


def member_valid_accuracy(member: Member, images: np.ndarray, labels: np.ndarray
                          ) -> dict[str, float]:
    """A member's own argmax on validation (post-hoc undone), with and without the mirror
    image: what the mirror rule decides on."""
    info = read_member(member)
    session = create_session(member.path, "cpu")
    spec = InputSpec.from_manifest(info.spec)
    posthoc = {"logit_bias": list(info.logit_bias), "temperature": info.temperature}
    plain = raw_posterior(predict(session, images, spec, desc=f"{member.name} valid"), posthoc)
    result = {"off": float(np.mean(plain.argmax(1) == labels) * 100.0)}
    if info.in_graph_flip:
        result["on"] = result["off"]
        result["in_graph"] = True
        return result
    mirrored = raw_posterior(predict(session, np.ascontiguousarray(images[..., ::-1]), spec,
                                     desc=f"{member.name} valid mirror"), posthoc)
    both = np.log(np.clip(plain, 1e-12, 1)) + np.log(np.clip(mirrored, 1e-12, 1))
    result["on"] = float(np.mean(both.argmax(1) == labels) * 100.0)
    return result


def choose_mirrors(members: Sequence[Member], valid, mirror: str
                   ) -> tuple[list[Member], dict[str, dict[str, Any]]]:
    """Each member with its mirror decision, and the validation numbers behind it."""
    from training.trainer import FLIP_TTA_MIN_GAIN

    chosen, table = [], {}
    for member in members:
        acc = member_valid_accuracy(member, valid.images, valid.labels)
        if acc.get("in_graph"):
            on = True
        elif mirror == "auto":
            on = acc["on"] - acc["off"] >= FLIP_TTA_MIN_GAIN
        else:
            on = mirror == "on"
        table[member.name] = {**acc, "mirror": on}
        chosen.append(Member(member.name, member.path, mirror=on and not acc.get("in_graph")))
    return chosen, table


def single_face_ms(path: Path, spec: InputSpec, repeats: int = 200) -> float:
    """Median ms of one face through the file on one CPU thread (the app's case)."""
    session = create_session(path, "cpu", threads=1)
    x = prepare_batch([np.full((spec.size, spec.size), 128, np.uint8)], spec)
    name = session.get_inputs()[0].name
    for _ in range(10):
        session.run(None, {name: x})
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, {name: x})
        times.append((time.perf_counter() - start) * 1000.0)
    return float(np.median(times))


def make_ensemble(name: str, members: Sequence[str], data_root: Path, *, out_dir: Path,
                  mirror: str = "auto", manifest: Path | None = None, register: bool = True,
                  occlusion_dir: Path | None = None, val_limit: int | None = None,
                  test_limit: int | None = None, command: str | None = None,
                  valid_sets: Path | None = None) -> Path:
    """Fit, build, verify, score, card and (optionally) register the ensemble; returns its file."""
    from training.cli import resolve_model_file
    from training.occlusion import EVALUATED_SETS
    from training.trainer import git_commit, posthoc_lines, publish, report_lines

    started = time.perf_counter()
    if mirror not in MIRROR_CHOICES:
        raise OccluferError(f"--mirror must be one of {', '.join(MIRROR_CHOICES)}")
    if len(members) < 2:
        raise OccluferError("an ensemble needs at least two members")
    given = [Member(Path(m).stem if m.lower().endswith('.onnx') else m,
                    resolve_model_file(m, manifest)) for m in members]
    valid = load_split("ferplus", data_root, "valid", "majority")
    if val_limit is not None:
        valid.images, valid.labels = valid.images[:val_limit], valid.labels[:val_limit]
    train = load_split("ferplus", data_root, "train", "crossentropy")
    infos = [read_member(m) for m in given]
    classes = infos[0].classes
    if tuple(classes) != tuple(valid.classes):
        raise OccluferError(f"members have classes {classes}, FERPlus {valid.classes}")
    chosen, mirrors = choose_mirrors(given, valid, mirror)

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plain_path = build_ensemble(chosen, out_dir / f"{name}_uncalibrated.onnx", logit_bias=None,
                                temperature=1.0, name=name)
    spec = InputSpec.from_manifest(infos[0].spec)
    probs = predict(create_session(plain_path, "cpu"), valid.images, spec, desc="ensemble valid")
    prior = class_prior(train.soft_labels, train.labels, len(classes))
    shifted = []
    names = list(valid.names)[:len(valid.labels)]
    for kind, images in shifted_valid_images(data_root, names, valid_sets):
        shifted_probs = predict(create_session(plain_path, "cpu"), images, spec,
                                desc=f"ensemble valid {kind}")
        shifted.append((np.log(np.clip(shifted_probs, 1e-12, 1.0)), valid.labels))
    calibration = fit_calibration(np.log(np.clip(probs, 1e-12, 1.0)), valid.labels, prior,
                                  tuple(classes), prior_source="mean training target "
                                  "(crossentropy: the FERPlus vote distributions)",
                                  shifted=shifted)
    plain_path.unlink()
    final = build_ensemble(chosen, out_dir / f"{name}.onnx", logit_bias=calibration.logit_bias,
                           temperature=calibration.temperature, name=name,
                           extra_metadata={"trained_on": "ferplus", "recipe": "ensemble"},
                           verify_images=list(valid.images[:64]))

    reports: dict[str, dict[str, Any]] = {}
    for kind in [None, *available_test_sets(data_root, EVALUATED_SETS, occlusion_dir)]:
        label = kind or "clean"
        reports[label] = evaluate(final, "ferplus", data_root, "test", occlusion=kind,
                                  occlusion_dir=occlusion_dir, limit=test_limit,
                                  report_dir=out_dir / "reports" / f"test_{label}",
                                  build_occluded=False)
        print(f"test {label}: {reports[label]['accuracy']:.2f} % "
              f"(macro-F1 {reports[label]['macro_f1']:.2f})", file=sys.stderr)

    cost = {m.name: single_face_ms(m.path, spec) for m in chosen}
    cost[name] = single_face_ms(final, spec)
    description = (f"Ensemble of {', '.join(members)} (their log-posteriors averaged; mirror "
                   f"image for {', '.join(m.name for m in chosen if mirrors[m.name]['mirror']) or 'none'}), "
                   "logit adjustment + temperature fitted on FER2013Valid")
    card = write_ensemble_card(
        out_dir / f"{name}.md", name=name, final=final, chosen=chosen, infos=infos,
        mirrors=mirrors, reports=reports, calibration=calibration, cost=cost,
        command=command or default_command(name, members, mirror),
        code=git_commit(), wall_minutes=(time.perf_counter() - started) / 60.0,
        manifest=manifest, lines_for_reports=report_lines(reports, "ferplus"),
        lines_for_posthoc=posthoc_lines(calibration, None))
    if register:
        publish(name, final, card, spec, tuple(classes), description, reports, "ferplus",
                manifest)
    return final


def default_command(name: str, members: Sequence[str], mirror: str) -> str:
    return (f"python -m training.ensemble --name {name} --members {' '.join(members)} "
            f"--data-root DATA_ROOT --mirror {mirror}")


def member_metrics(name: str, manifest: Path | None) -> dict[str, Any]:
    """A member's shipped test metrics from the manifest it is registered in (the given one,
    else the repository's); {} for a file that is in neither."""
    from app.runtime.store import ModelStore

    for store in (ModelStore(manifest=manifest), ModelStore()):
        try:
            if name in store.names():
                return store.entry(name).get("metrics", {})
        except OccluferError:
            continue
    return {}


def write_ensemble_card(path: Path, *, name: str, final: Path, chosen: Sequence[Member],
                        infos, mirrors: dict[str, dict[str, Any]],
                        reports: dict[str, dict[str, Any]], calibration, cost: dict[str, float],
                        command: str, code: str, wall_minutes: float, manifest: Path | None,
                        lines_for_reports: list[str], lines_for_posthoc: list[str]) -> Path:
    """The ensemble's card: its members (by sha256), what each contributes, the same
    accuracy and post-hoc sections as a trained model's card, and its cost per face."""
    from app.bench import cpu_name
    from training.trainer import LICENCE

    outputs = json.loads(model_metadata(create_session(final, "cpu"))[2].get("outputs", "{}"))
    lines = [
        f"# {name} — facial expression classifier (ensemble)",
        "",
        "| | |",
        "|---|---|",
        f"| Network | ensemble of {len(chosen)} shipped models, their log-posteriors averaged "
        "(`exporters/ensemble.py`) |",
        f"| Classes | {', '.join(infos[0].classes)} |",
        f"| Input | `input` (N, 3, {infos[0].spec['size']}, {infos[0].spec['size']}) float32, "
        f"{infos[0].spec['color']} replicated to 3 channels, (x - 127.5) / 127.5 |",
        "| Outputs | " + "; ".join(f"`{k}` {v}" for k, v in outputs.items()) + " |",
        f"| File | `{final.name}` (members' fp16-stored weights, {final.stat().st_size / 1e6:.1f} "
        f"MB, sha256 `{sha256_file(final)}`) |",
        f"| Licence | {LICENCE} |",
        "",
        "## Members",
        "",
        "Each member's own post-hoc step (logit bias, temperature) is undone in the graph; the "
        "mirror image is added for a member only when it gains at least 0.5 points on "
        "FER2013Valid (a member whose own graph averages the mirror image keeps it).",
        "",
        "| member | sha256 | FER2013Valid (own argmax) | with mirror | mirror in ensemble | "
        "clean test (shipped) | masked test (shipped) | ms / face |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for info in infos:
        m = info.member.name
        metrics = member_metrics(m, manifest)
        row = mirrors[m]
        where = "in its graph" if row.get("in_graph") else ("yes" if row["mirror"] else "no")
        lines.append(
            f"| `{m}` | `{info.sha256[:12]}` | {row['off']:.2f} | {row['on']:.2f} | {where} | "
            + " | ".join(f"{metrics[k]['accuracy']:.2f}" if k in metrics else "–"
                         for k in ("clean", "masked"))
            + f" | {cost.get(m, float('nan')):.2f} |")
    lines += ["", f"The ensemble: {cost[name]:.2f} ms per face on one thread of {cpu_name()} "
              "(median of 200 single-face runs; the members' column is each file alone, "
              "mirror included only where its own graph has it).", ""]
    lines += lines_for_reports
    lines += lines_for_posthoc
    lines += [
        "",
        "Per-class accuracy (clean test): " + (", ".join(
            f"{c} {v:.1f} %" for c, v in reports["clean"]["per_class_accuracy"].items()
            if v is not None) if "clean" in reports else "n/a") + ".",
        "",
        "## How it was made",
        "",
        f"- Command: `{command}`",
        f"- Code: git commit {code}",
        "- Data: FERPlus at `../shared/data/ferplus` (DATA_ROOT): FER2013Valid (majority "
        "protocol) for the mirror choice, logit adjustment and temperature (with its "
        "occluded and degraded copies for the temperature); the training "
        "split only for the class prior (mean vote distribution); test sets only scored.",
        f"- Hardware: {cpu_name()}; wall time {wall_minutes:.1f} min (no training: the "
        "members were trained as their own cards say).",
        "",
        "## Limits",
        "",
        "An ensemble is only as different as its members: these were all trained on FERPlus "
        "with occlufer's occluders and degradations, so it inherits their blind spots. It "
        "costs the sum of its members per face (the table above), so on a slow CPU with many "
        "faces a single member may be the better live choice.",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True, help="entry name, e.g. ensemble_cpu")
    parser.add_argument("--members", nargs="+", required=True,
                        help="shipped expression models (names or .onnx files)")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--mirror", choices=MIRROR_CHOICES, default="auto",
                        help="mirror image per member: auto = when it gains >= 0.5 points")
    parser.add_argument("--out", type=Path, default=None, help="default runs/<name>")
    parser.add_argument("--occlusion-dir", type=Path, default=None)
    parser.add_argument("--valid-sets", type=Path, default=None,
                        help="validation copies for the temperature (built when missing)")
    parser.add_argument("--no-register", action="store_true")
    parser.add_argument("--manifest", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        final = make_ensemble(args.name, args.members, args.data_root,
                              out_dir=args.out or Path("runs") / args.name, mirror=args.mirror,
                              manifest=args.manifest, register=not args.no_register,
                              occlusion_dir=args.occlusion_dir, valid_sets=args.valid_sets)
    except (DatasetError, OccluferError, EnsembleError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(final)
    return 0


if __name__ == "__main__":
    sys.exit(main())
