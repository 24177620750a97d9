"""Options and entry points of `occlufer train` and `occlufer eval`.

`app/cli.py` owns the command and adds these options to its subparsers; this module keeps
torch out of the import path until `train` actually runs (`eval` never needs torch).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from app.errors import OccluferError


def report_results(compute, render, out: Path | None) -> int:
    """The tail every measuring command shares (`training.ablation`, `gating_probe`,
    `foreign_shifts`): a data or model problem as one line and exit 2, the table on stdout,
    the results as JSON in `out` where asked."""
    from app.errors import DatasetError

    try:
        results = compute()
    except (DatasetError, OccluferError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render(results))
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2))
    return 0

#: `--occlusion`: none, every occluder kind and camera-degradation set, or `all` (clean plus
#: the sets a model's card reports: training.occlusion.EVALUATED_SETS)
OCCLUSION_CHOICES = ("none", "masked", "sunglasses", "objects", "hands", "block_upper",
                     "block_lower", "block_left", "block_right", "blur", "small", "jpeg",
                     "noise", "lowlight", "degraded", "all")


def add_publish_args(parser: argparse.ArgumentParser) -> None:
    """Where a finished run lands: every trainer registers its model the same way."""
    parser.add_argument("--no-register", dest="register", action="store_false",
                        help="do not copy the model into assets/ and the manifest")
    add_manifest_arg(parser)


def add_manifest_arg(parser: argparse.ArgumentParser) -> None:
    """`--manifest`: which store a model lands in (the trainers' and `training.publish`'s)."""
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest to register in (default $OCCLUFER_MANIFEST or "
                             "assets/manifest.json)")


def add_train_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="network name (models.registry), e.g. resnet18")
    parser.add_argument("--dataset", default="ferplus", help="data set format (default ferplus)")
    parser.add_argument("--data-root", required=True, type=Path, help="data set root folder")
    parser.add_argument("--recipe", default="fast",
                        help="recipe in training/recipes/<model>.py: fast (CPU) or paper")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out after its last finished epoch")
    parser.add_argument("--no-occlusion-aug", dest="occlusion_aug", action="store_false",
                        help="train without synthetic occluders")
    parser.add_argument("--name", default=None,
                        help="the model's entry name in the manifest, its card and ONNX file "
                             "(default <model>_<recipe>, _kd when distilled); a second run of "
                             "one recipe, e.g. with another teacher, needs its own")
    parser.add_argument("--out", type=Path, default=None,
                        help="run folder (default runs/<model>_<recipe>)")
    parser.add_argument("--limit", type=int, default=None,
                        help="use only N training images (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation processes (default 0 on <= 2 cores; 0 = in the "
                             "training process)")
    parser.add_argument("--precision", default="auto",
                        choices=("auto", "fp32", "bf16", "fp16"),
                        help="autocast dtype (default auto: bf16 on CPUs with AVX512-BF16/AMX "
                             "and on CUDA GPUs that have it, fp16 on other GPUs, else fp32)")
    parser.add_argument("--no-channels-last", dest="channels_last", action="store_const",
                        const=False, default=None,
                        help="keep NCHW tensors (default: channels_last)")
    parser.add_argument("--occluder-bank", type=int, default=None, metavar="K",
                        help="occluders painted per epoch and shared by its faces (default: "
                             "the recipe's; 0 = one painted per face)")
    parser.add_argument("--teacher", dest="teachers", nargs="+", default=None, metavar="MODEL",
                        help="distil from these shipped models' distribution on each clean "
                             "training face (information-gap distillation; default: the "
                             "recipe's)")
    parser.add_argument("--distill-weight", type=float, default=None,
                        help="weight of the teacher distribution in the target (default 0.5)")
    parser.add_argument("--train-priors", default=None, choices=("teacher", "runtime"),
                        help="what a prior-guided model (ORSANet) is fed while it trains: "
                             "teacher = FaceMesh on the clean face + the occluder's true mask, "
                             "runtime = the app's landmark student and occlusion network on "
                             "the augmented face (default: the recipe's)")
    add_publish_args(parser)
    parser.add_argument("--occlusion-dir", type=Path, default=None,
                        help="where the occluded test sets are (default "
                             "$OCCLUFER_CACHE/occlusion_sets or ~/.cache/occlufer/occlusion_sets)")
    parser.add_argument("--no-finalize", dest="finalize", action="store_false",
                        help="stop after the last epoch without exporting, evaluating or "
                             "writing the card (a machine without the test data, e.g. a lent "
                             "GPU: `--resume` on one that has it finishes the run)")
    parser.add_argument("--build-occluded-sets", action="store_true",
                        help="build missing occluded FERPlus test sets for the final evaluation "
                             "(default: score only the sets that exist)")


def _command_line() -> str | None:
    """The command as typed when it came through `occlufer train`, without `--resume` (the card
    says where a run resumed; its command is the one that makes the file from nothing); None
    lets the trainer write the equivalent command from its arguments."""
    if sys.argv[1:2] == ["train"]:
        return shlex.join(["occlufer", *(a for a in sys.argv[1:] if a != "--resume")])
    return None


def run_train(args: argparse.Namespace) -> int:
    from training.trainer import train

    try:
        result = train(args.model, args.dataset, args.data_root, args.recipe, args.device,
                       epochs=args.epochs, resume=args.resume, out_dir=args.out,
                       occlusion_aug=args.occlusion_aug, limit=args.limit, seed=args.seed,
                       workers=args.workers, register=args.register, manifest=args.manifest,
                       occlusion_dir=args.occlusion_dir,
                       build_occluded=args.build_occluded_sets, command=_command_line(),
                       precision=args.precision, channels_last=args.channels_last,
                       occluder_bank=args.occluder_bank, teachers=args.teachers,
                       distill_weight=args.distill_weight, train_priors=args.train_priors,
                       entry_name=args.name, finalize=args.finalize)
    except KeyError as exc:  # unknown model or recipe
        raise OccluferError(str(exc.args[0])) from exc
    print(f"wrote {result}")
    return 0


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    from training.evaluate import PRIOR_SOURCES

    parser.add_argument("--model", required=True,
                        help="model name from the manifest, or a path to an .onnx file")
    parser.add_argument("--dataset", default="ferplus", help="ferplus, folder, rafdb, ...")
    parser.add_argument("--root", required=True, type=Path, help="data set root folder")
    parser.add_argument("--split", default="test")
    parser.add_argument("--occlusion", default="none", choices=OCCLUSION_CHOICES,
                        help="score on a synthetic occluded copy of the split (ferplus; built "
                             "on first use); `all` = clean plus the four test-set kinds")
    parser.add_argument("--occlusion-dir", type=Path, default=None,
                        help="where occluded sets live (default $OCCLUFER_CACHE/occlusion_sets "
                             "or ~/.cache/occlufer/occlusion_sets)")
    parser.add_argument("--report", required=True, type=Path,
                        help="folder for report.json and confusion_matrix.png")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--manifest", type=Path, default=None,
                        help="manifest for --model NAME (default $OCCLUFER_MANIFEST or "
                             "assets/manifest.json)")
    parser.add_argument("--priors", default="runtime", choices=PRIOR_SOURCES,
                        help="what feeds a prior-guided model (ORSANet): runtime = the app's "
                             "landmark student + occlusion map on the test face; oracle = the "
                             "FaceMesh teacher on the clean face + the occluder's true mask; "
                             "template = the export's defaults")


def resolve_model_file(model: str, manifest: Path | None = None) -> Path:
    """An existing .onnx path as given, else the manifest entry's file (relative to the
    manifest's folder for shipped assets, the store otherwise)."""
    path = Path(model).expanduser()
    if path.suffix.lower() == ".onnx" or path.is_file():
        if not path.is_file():
            raise OccluferError(f"model file not found: {path}")
        return path
    from app.runtime.store import ModelStore

    return ModelStore(manifest=manifest).path(model)


def run_eval(args: argparse.Namespace) -> int:
    from training.evaluate import evaluate

    onnx_path = resolve_model_file(args.model, args.manifest)
    from training.occlusion import EVALUATED_SETS

    kinds = ["none", *EVALUATED_SETS] if args.occlusion == "all" else [args.occlusion]
    summary = {}
    for kind in kinds:
        report_dir = args.report if len(kinds) == 1 else args.report / kind
        report = evaluate(onnx_path, args.dataset, args.root, args.split, occlusion=kind,
                          occlusion_dir=args.occlusion_dir, report_dir=report_dir,
                          device=args.device, batch=args.batch, priors=args.priors)
        summary[kind] = report
        print(f"{report['dataset']} {report['split']} occlusion={report['occlusion']}: "
              f"accuracy {report['accuracy']:.2f}%  macro-F1 {report['macro_f1']:.2f}  "
              f"n={report['n']}  -> {report_dir / 'report.json'}")
    if len(kinds) > 1:
        table = {k: {"accuracy": v["accuracy"], "macro_f1": v["macro_f1"], "n": v["n"]}
                 for k, v in summary.items()}
        (args.report / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
    return 0
