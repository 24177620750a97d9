"""Train an expression network, then export, evaluate, document and register it.

One call does the whole life of a model, so every published number has a reproducible path:

    train("resnet18", "ferplus", root, "fast", "cpu", out_dir=Path("runs/resnet18_fast"))

1. data: `training.data.load_split` (train / FER2013Valid), optionally the first `limit`
   images of a seeded shuffle; augmentation from `training/augment.py`, with synthetic
   occluders from `training.occlusion` on half of the faces when `occlusion_aug` is on;
2. training: SGD/AdamW with warmup + cosine (or step) per iteration, AMP on CUDA (bf16 where
   supported, else fp16 with a GradScaler), a tqdm bar with loss / accuracy / img/s, one
   `metrics.csv` row per epoch (TensorBoard too, only if it happens to be installed);
3. checkpoints: `last.pt` after every epoch (model, optimiser, scheduler, scaler, epoch, best
   metric, history, RNG states) and `best.pt` on every new best FER2013Valid accuracy, both
   written atomically. `resume=True` restarts after the last finished epoch and, because
   every sample's augmentation is seeded by (seed, epoch, index) and the torch RNG state is
   restored, produces the same weights as a run that was never interrupted;
4. early stopping when FER2013Valid accuracy has not improved for `recipe.patience` epochs;
5. the best weights go through `exporters/classifier.py` (fp16 when its validation accuracy
   is within 0.3 points of fp32), `training/evaluate.py` scores the ONNX on the clean test
   split and on every occluded test set that exists, a model card is written next to the
   weights, and the model is registered in the store manifest (`exporters/manifest.py`).
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from app import REPO_ROOT
from app.errors import DatasetError, OccluferError
from app.pipeline.preprocess import InputSpec
from models.losses import soft_cross_entropy
from training.augment import AugmentConfig, augment_batch
from training.data import load_split
from training.recipes import Recipe, get_recipe

FP16_TOLERANCE_POINTS = 0.3  # fp16 export is kept when it loses at most this much accuracy
VALID_FRACTION = 0.1  # held out of train when a data set has no validation split
LICENCE = ("MIT (occlufer-trained weights). Training data: FER-2013 images (ICML 2013 "
           "representation-learning challenge; its terms of use apply) with FERPlus labels "
           "(Microsoft, MIT).")


# --------------------------------------------------------------------------- data
@dataclass
class SplitArrays:
    """Packed images + targets of one split as the trainer consumes them."""

    images: np.ndarray
    labels: np.ndarray  # (N,) int64
    soft: np.ndarray | None  # (N, C) float32 for soft-label modes
    classes: tuple[str, ...]
    source: str  # where the split came from, for the model card
    names: list[str] | None = None  # image ids, for per-image caches (the landmark teacher)
    #: (N, 68, 2) per-image landmarks in pixels, for recipes whose `aux` needs them
    landmarks68: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


class BatchSource(torch.utils.data.Dataset):
    """Map-style dataset whose keys are whole batches `(epoch, indices)`.

    A worker builds a full batch (augment + `prepare_batch`) in one go; the key carries the
    epoch, so each sample's generator is known without any state shared with workers.
    """

    def __init__(self, split: SplitArrays, spec: InputSpec, augment: AugmentConfig | None,
                 occlusion: bool, seed: int, label_mode: str, aux: tuple[str, ...] = ()) -> None:
        self.split, self.spec, self.augment = split, spec, augment
        self.occlusion, self.seed, self.label_mode = occlusion, seed, label_mode
        self.aux = tuple(aux)  # Recipe.aux: per-sample extras for the model's training_loss
        #: (N, C) teacher distribution on each clean face (`training.distill`), or None
        self.teacher: np.ndarray | None = None
        self.distill_weight = 0.0
        #: `training.runtime_priors.RuntimePriors` for Recipe.train_priors == "runtime"
        self.priors = None

    def __len__(self) -> int:  # only for DataLoader's bookkeeping
        return len(self.split)

    def __getitem__(self, key: tuple[int, tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
        """(x, target), or (x, target, extras) when the recipe asks for `aux` extras."""
        epoch, indices = key
        extras = None
        x = augment_batch(self.split.images, indices, epoch, self.seed, self.spec, self.augment,
                          self.occlusion, aux=self.aux, landmarks68=self.split.landmarks68,
                          priors=self.priors)
        if self.aux:
            x, extras = x
        idx = np.asarray(indices)
        if self.split.soft is None:
            target = torch.from_numpy(self.split.labels[idx])
        elif self.label_mode == "probability":
            # one label per sample and epoch, drawn from the annotators' distribution
            rng = np.random.default_rng([self.seed, epoch, 7919])
            cumulative = np.cumsum(self.split.soft[idx], axis=1)
            draws = rng.random(len(idx))[:, None]
            target = torch.from_numpy((draws > cumulative).sum(axis=1).astype(np.int64))
        else:
            target = torch.from_numpy(self.split.soft[idx])
        if self.teacher is not None:
            from training.distill import mix_targets

            target = torch.from_numpy(mix_targets(target.numpy(), self.teacher[idx],
                                                  self.distill_weight))
        if extras is not None:
            return (torch.from_numpy(x), target,
                    {k: torch.from_numpy(v) for k, v in extras.items()})
        return torch.from_numpy(x), target


def _worker_init(_: int) -> None:
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def default_workers() -> int:
    """Augmentation processes: none on a 2-core machine (measured: a worker only competes
    with torch's two threads there, 113 vs 118 img/s), else most of the spare cores."""
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else min(8, cores - 2)


def epoch_batches(n: int, batch_size: int, epoch: int, seed: int,
                  drop_last: bool = True) -> list[tuple[int, tuple[int, ...]]]:
    """The batches of one epoch: a permutation seeded by (seed, epoch) only."""
    order = np.random.default_rng([int(seed), int(epoch), 104729]).permutation(n)
    stop = (n // batch_size) * batch_size if drop_last and n >= batch_size else n
    return [(epoch, tuple(int(i) for i in order[s:s + batch_size]))
            for s in range(0, stop, batch_size)]


def load_training_data(dataset: str, root: Path, label_mode: str, limit: int | None,
                       seed: int, val_limit: int | None) -> tuple[SplitArrays, SplitArrays]:
    """Train and validation splits; a data set without a validation split gives up a
    seeded 10 % of its training images instead."""
    train = load_split(dataset, root, "train", label_mode)
    try:
        valid = load_split(dataset, root, "valid", "majority")
        valid_arrays = SplitArrays(valid.images, valid.labels, None, valid.classes,
                                   f"{dataset} valid", list(valid.names))
        train_idx = np.arange(len(train))
    except DatasetError:
        order = np.random.default_rng([seed, 31337]).permutation(len(train))
        n_val = max(1, int(round(len(train) * VALID_FRACTION)))
        val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
        valid_arrays = SplitArrays(train.images[val_idx], train.labels[val_idx], None,
                                   train.classes,
                                   f"{dataset} train (held-out {VALID_FRACTION:.0%})",
                                   [train.names[i] for i in val_idx])
    if limit is not None and limit < len(train_idx):
        chosen = np.random.default_rng([seed, 271828]).permutation(len(train_idx))[:limit]
        train_idx = train_idx[np.sort(chosen)]
    if val_limit is not None:
        valid_arrays = SplitArrays(valid_arrays.images[:val_limit], valid_arrays.labels[:val_limit],
                                   None, valid_arrays.classes, valid_arrays.source,
                                   (valid_arrays.names or [])[:val_limit] or None)
    soft = None if train.soft_labels is None else train.soft_labels[train_idx]
    train_arrays = SplitArrays(train.images[train_idx], train.labels[train_idx], soft,
                               train.classes, f"{dataset} train", [train.names[i] for i in train_idx])
    return train_arrays, valid_arrays


#: Recipe extras that are drawn from the face's 68 landmarks.
LANDMARK_AUX = ("landmarks68", "parsing")


def attach_teacher_landmarks(dataset: str, train: SplitArrays, valid: SplitArrays,
                             progress: bool, teacher=None) -> str:
    """Give both splits the FaceMesh teacher's per-image 68 points (see
    `training.perception.teacher.teacher_landmarks68`); returns a line for the model card.
    The held-out validation faces of a data set without a valid split share the train cache."""
    from training.perception.teacher import teacher_landmarks68

    lines = []
    for split_name, arrays in (("train", train), ("valid", valid)):
        cache_split = "valid" if arrays.source.endswith(" valid") else "train"
        points, found = teacher_landmarks68(dataset, cache_split, arrays.names or [],
                                            arrays.images, progress=progress,
                                            teacher=teacher)
        arrays.landmarks68 = points
        lines.append(f"{split_name} {int(found.sum())}/{len(found)}")
    return ("landmarks: FaceMesh teacher on each clean face, 468 -> iBUG 68 (" + ", ".join(lines)
            + " found; the FERPlus template for the rest)")


# --------------------------------------------------------------------------- optimisation
def make_optimizer(model: nn.Module, recipe: Recipe, fused: bool = False) -> torch.optim.Optimizer:
    """Weight decay on conv/linear weights only: decaying BN scales and biases only hurts."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov)
    if recipe.optimizer == "adamw":
        # the fused kernel: one pass over all parameters (5.5 -> 2.4 ms a step on the CPU)
        return torch.optim.AdamW(groups, lr=recipe.lr, betas=tuple(recipe.betas), fused=fused)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def lr_factor(step: int, total: int, warmup: int, recipe: Recipe) -> float:
    """Multiplier of the peak lr at iteration `step`: linear warmup, then cosine or steps."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if recipe.schedule == "cosine":
        # recipe.cosine_epochs: a horizon longer than the run (PyTorch's T_max > epochs)
        horizon = total if recipe.cosine_epochs is None else int(
            round(total * recipe.cosine_epochs / recipe.epochs))
        progress = min(1.0, (step - warmup) / max(1, horizon - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if recipe.schedule == "step":
        passed = sum(step >= m * total for m in recipe.milestones)
        return recipe.gamma ** passed
    raise ValueError(f"unknown schedule {recipe.schedule!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = recipe.epochs * steps_per_epoch
    warmup = int(round(recipe.warmup_epochs * steps_per_epoch))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total, warmup, recipe))


loss_fn = soft_cross_entropy  # the one definition, shared with the networks


# --------------------------------------------------------------------------- state
@dataclass
class RunState:
    """Progress that a checkpoint must carry besides the tensors."""

    epoch: int = 0  # finished epochs
    best_acc: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the best
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    #: one entry per training session: git commit, first epoch, precision, memory format
    sessions: list[dict[str, Any]] = field(default_factory=list)


def check_resume_identity(checkpoint: dict[str, Any], identity: dict[str, Any],
                          path: Path) -> None:
    """Refuse to resume a run that was started with other settings: its remaining epochs
    would silently train a different model than the card will describe."""
    saved = checkpoint["identity"]
    mismatched = {k: (saved.get(k), identity.get(k)) for k in {**saved, **identity}
                  if saved.get(k) != identity.get(k)}
    if mismatched:
        raise OccluferError(f"cannot resume {path}: it was started with different "
                            f"settings (saved, now): {mismatched}")


def rng_states() -> dict[str, Any]:
    states = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill never leaves half a checkpoint."""
    tmp = path.with_name(path.name + ".part")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- provenance
def git_commit() -> str:
    """HEAD of the repository, marked when the working tree differs from it.

    `$OCCLUFER_CODE_VERSION` names the commit instead where the code is a copy without git
    history: `training.offload` ships a clean commit's files to a lent GPU and sets it."""
    if os.environ.get("OCCLUFER_CODE_VERSION"):
        return os.environ["OCCLUFER_CODE_VERSION"]
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return "uncommitted"
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=30)
        suffix = " (with uncommitted changes)" if dirty.stdout.strip() else ""
        return head.stdout.strip() + suffix
    except (OSError, subprocess.SubprocessError):
        return "uncommitted"


def _relative_to_repo(path: Path) -> str:
    """`path` as the repository sees it (e.g. ../shared/data/ferplus): a card must not name
    one machine's absolute folders."""
    try:
        return os.path.relpath(Path(path).resolve(), REPO_ROOT)
    except ValueError:  # another drive (Windows)
        return Path(path).name


def code_versions(state: RunState) -> str:
    """The commits that trained the epochs and the one that exported and scored them."""
    now = git_commit()
    trained = [f"from epoch {s['from_epoch'] + 1} at git commit {s['commit']} "
               f"({s['precision']})" for s in state.sessions]
    if not trained:
        return f"git commit {now}"
    return f"trained {'; '.join(trained)}; exported and evaluated at git commit {now}"


def hardware(device: str) -> str:
    from app.bench import cpu_name

    text = f"{cpu_name()}, {os.cpu_count()} logical cores, torch {torch.__version__} " \
           f"({torch.get_num_threads()} threads)"
    if device == "cuda" and torch.cuda.is_available():
        text += f"; GPU {torch.cuda.get_device_name(0)}"
    return text


def training_hardware(state: RunState, device: str) -> str:
    """Where the epochs ran and where the file was exported and scored: a run trained on a
    lent GPU (`training.offload`) is finished on the CPU that ships it."""
    here = f"{hardware(device)} (device {device})"
    trained = list(dict.fromkeys(s["hardware"] for s in state.sessions if s.get("hardware")))
    if not trained or trained == [hardware(device)]:
        return here
    return f"trained on {'; '.join(trained)}; exported and evaluated on {here}"


def first_command(state: RunState, command: str) -> str:
    """The command that made the run from nothing (its first session's), else `command`: a
    run resumed elsewhere, e.g. finished on the CPU after a GPU trained it, keeps the command
    that trained it."""
    return next((s["command"] for s in state.sessions if s.get("command")), command)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise OccluferError("--device cuda was asked for but this torch build sees no CUDA GPU "
                            f"(torch {torch.__version__}); use --device cpu")
    if device not in ("cpu", "cuda"):
        raise OccluferError(f"unknown device {device!r}: use cpu, cuda or auto")
    return torch.device(device)


def cpu_supports_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): there bf16 autocast
    doubles training speed (measured: 374 -> 786 img/s with channels_last on the ResNet-18
    fast network); elsewhere torch emulates it and it is slower than fp32."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for training (None = fp32). `auto`: bf16 on a CUDA GPU that has it
    (else fp16 with a GradScaler) and on a CPU with native bf16, fp32 on other CPUs."""
    if precision not in PRECISIONS:
        raise OccluferError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_supports_bf16() else None
    if precision == "fp16" and device.type != "cuda":
        raise OccluferError("--precision fp16 needs --device cuda; on a CPU use bf16 or fp32")
    return torch.bfloat16 if precision == "bf16" else torch.float16


# --------------------------------------------------------------------------- loops
def evaluate_torch(model: nn.Module, x: torch.Tensor, labels: np.ndarray, device: torch.device,
                   amp_dtype: torch.dtype | None, batch: int = 256,
                   priors: dict[str, torch.Tensor] | None = None) -> tuple[float, float]:
    """(mean loss, accuracy %) of `model` on a prepared, unaugmented split; `priors` are
    per-image extra inputs (N, ...) for a model that takes them."""
    model.eval()
    losses, correct = 0.0, 0
    y = torch.from_numpy(labels)
    with torch.no_grad():
        for start in range(0, len(x), batch):
            xb = x[start:start + batch].to(device, non_blocking=True)
            yb = y[start:start + batch].to(device)
            extra = {k: v[start:start + batch].to(device) for k, v in (priors or {}).items()}
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(xb, **extra)
            losses += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    return losses / max(1, len(x)), correct / max(1, len(x)) * 100.0


def write_metrics_csv(history: list[dict[str, Any]], path: Path) -> None:
    if not history:
        return
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, path)


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional and not a dependency
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def default_entry_name(model_name: str, recipe: str, dataset: str, occlusion_aug: bool,
                       distilled: bool = False) -> str:
    name = f"{model_name}_{recipe}"
    if dataset.lower() != "ferplus":
        name += f"_{dataset.lower()}"
    if distilled:
        name += "_kd"
    return name if occlusion_aug else name + "_noocc"


def train(model_name: str, dataset: str, data_root: Path, recipe: str | Recipe,
          device: str = "cpu", epochs: int | None = None, resume: bool = False,
          out_dir: Path | None = None, occlusion_aug: bool = True, limit: int | None = None,
          seed: int = 0, *, workers: int | None = None, val_limit: int | None = None,
          test_limit: int | None = None, stop_after: int | None = None, finalize: bool = True,
          register: bool = True, manifest: Path | None = None, entry_name: str | None = None,
          occlusion_dir: Path | None = None, build_occluded: bool = False,
          command: str | None = None, progress: bool = True, teacher=None,
          precision: str = "auto", channels_last: bool | None = None,
          occluder_bank: int | None = None,
          teachers: Sequence[str] | None = None, distill_weight: float | None = None,
          train_priors: str | None = None) -> Path:
    """Train `model_name` with `recipe` and return the final ONNX (or `last.pt` when
    `finalize` is off or `stop_after` ended the run early).

    `stop_after=k` stops after k finished epochs as if the process had been killed (tests);
    `workers` augmentation processes (default: `default_workers()`, 0 = in-process);
    `build_occluded` builds missing occluded FERPlus test sets before the final evaluation
    (otherwise only the sets that already exist in `occlusion_dir` are scored);
    `val_limit`/`test_limit` score only the first N images (smoke tests);
    `manifest` overrides $OCCLUFER_MANIFEST / assets/manifest.json for `register`;
    `teacher` is (FaceMeshLandmarker, ONNX path) for recipes whose `aux` needs landmarks
    (default: the installed `facemesh_468`).
    Engine settings, which change speed and not the recipe: `precision` (autocast dtype,
    `resolve_precision`), `channels_last` (default: on; oneDNN's convolutions run faster in
    NHWC, 609 -> 786 img/s in bf16 on the CPU, and so do cuDNN's tensor-core ones), `occluder_bank` (overrides
    the recipe's `augment.occluder_bank`; see `training.augment`).
    `teachers` / `distill_weight` override the recipe's distillation (`training.distill`);
    a distilled run's default entry name ends in `_kd`.
    `train_priors` overrides the recipe's `train_priors` (`training.runtime_priors`); a run
    whose priors differ from its recipe's gets `_<source>priors` in its default entry name.
    """
    from models import create_model

    started_wall = time.perf_counter()
    recipe_obj = get_recipe(model_name, recipe) if isinstance(recipe, str) else recipe
    recipe_obj = recipe_obj.with_epochs(epochs)
    if occluder_bank is not None:
        recipe_obj = replace(recipe_obj,
                             augment=replace(recipe_obj.augment, occluder_bank=int(occluder_bank)))
    if teachers is not None:
        recipe_obj = replace(recipe_obj, distill_teachers=tuple(teachers))
    if distill_weight is not None:
        recipe_obj = replace(recipe_obj, distill_weight=float(distill_weight))
    priors_suffix = ""
    if train_priors is not None and train_priors != recipe_obj.train_priors:
        from training.runtime_priors import TRAIN_PRIOR_SOURCES

        if train_priors not in TRAIN_PRIOR_SOURCES:
            raise OccluferError(f"unknown training priors {train_priors!r}; choose one of "
                                f"{TRAIN_PRIOR_SOURCES}")
        recipe_obj = replace(recipe_obj, train_priors=train_priors)
        priors_suffix = f"_{train_priors}priors"
    name = entry_name or (default_entry_name(model_name, recipe_obj.name, dataset, occlusion_aug,
                                             bool(recipe_obj.distill_teachers)) + priors_suffix)
    data_root = Path(data_root).expanduser().resolve()
    out_dir = Path(out_dir) if out_dir else REPO_ROOT / "runs" / name
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if last_path.exists() and not resume:
        raise OccluferError(f"{out_dir} already holds a run (last.pt); pass --resume to continue "
                            "it or --out to start a new one")
    torch_device = resolve_device(device)
    command = command or _equivalent_command(model_name, dataset, data_root, recipe_obj.name,
                                             device, epochs, resume, out_dir, occlusion_aug,
                                             limit, seed)
    seed_everything(seed)

    train_data, valid_data = load_training_data(dataset, data_root, recipe_obj.label_mode, limit,
                                                seed, val_limit)
    landmark_note = None
    if set(LANDMARK_AUX) & set(recipe_obj.aux):
        landmark_note = attach_teacher_landmarks(dataset, train_data, valid_data, progress,
                                                 teacher)
        tqdm.write(landmark_note)
    classes = train_data.classes
    spec = InputSpec(size=recipe_obj.size, color=recipe_obj.color)  # type: ignore[arg-type]
    model_cfg = {**recipe_obj.model_cfg, "num_classes": len(classes), "in_chans": spec.channels}
    model = create_model(model_name, **model_cfg).to(torch_device)
    optimizer = make_optimizer(model, recipe_obj, fused=True)
    batch_size = min(recipe_obj.batch_size, len(train_data))
    steps_per_epoch = len(epoch_batches(len(train_data), batch_size, 0, seed))
    scheduler = make_scheduler(optimizer, recipe_obj, steps_per_epoch)
    amp_dtype = resolve_precision(precision, torch_device)
    # validation on the CPU stays fp32: the best epoch is chosen on what the ONNX will compute
    eval_dtype = amp_dtype if torch_device.type == "cuda" else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    if channels_last is None:  # NHWC is what oneDNN and cuDNN's tensor-core convolutions want
        channels_last = True
    if torch_device.type == "cuda":  # fixed batch shapes (drop_last): autotune each conv once
        torch.backends.cudnn.benchmark = True
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    identity = {"model_name": model_name, "dataset": dataset, "recipe": recipe_obj.name,
                "seed": seed, "limit": limit, "occlusion_aug": occlusion_aug}
    if recipe_obj.distill_teachers:  # (absent for undistilled runs: older checkpoints resume)
        identity["distill"] = [list(recipe_obj.distill_teachers), recipe_obj.distill_weight]
    if recipe_obj.train_priors != "teacher":
        identity["train_priors"] = recipe_obj.train_priors
    state = RunState()
    if resume and last_path.exists():
        checkpoint = torch.load(last_path, map_location=torch_device, weights_only=False)
        check_resume_identity(checkpoint, identity, last_path)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = RunState(**checkpoint["state"])
        restore_rng_states(checkpoint["rng"])
        if checkpoint["recipe"]["epochs"] != recipe_obj.epochs:
            tqdm.write(f"note: resuming a {checkpoint['recipe']['epochs']}-epoch run as a "
                       f"{recipe_obj.epochs}-epoch run; the lr schedule is stretched from here")
        tqdm.write(f"resuming {last_path} after epoch {state.epoch} "
                   f"(best FER2013Valid {state.best_acc:.2f}% at epoch {state.best_epoch})")
    elif resume:
        tqdm.write(f"no checkpoint in {out_dir}; starting a new run")
    if state.epoch < recipe_obj.epochs and not state.stopped_early:
        # the code that trains this session's epochs (the card lists every session's)
        state.sessions.append({"commit": git_commit(), "from_epoch": state.epoch,
                               "precision": str(amp_dtype).replace("torch.", "")
                               if amp_dtype else "float32",
                               "channels_last": bool(channels_last),
                               "started": dt.datetime.now().isoformat(timespec="seconds"),
                               "hardware": hardware(torch_device.type), "command": command})

    n_workers = default_workers() if workers is None else workers
    source = BatchSource(train_data, spec, recipe_obj.augment, occlusion_aug, seed,
                         recipe_obj.label_mode, recipe_obj.aux)
    distill_note = None
    if recipe_obj.distill_teachers:
        from training.distill import teacher_targets

        source.teacher, distill_note = teacher_targets(
            recipe_obj.distill_teachers, train_data.images, train_data.names or [], classes,
            manifest, progress=progress)
        source.distill_weight = recipe_obj.distill_weight
        distill_note += f", mixed into the target with weight {recipe_obj.distill_weight}"
        tqdm.write(distill_note)
    valid_x = torch.from_numpy(augment_batch(valid_data.images, range(len(valid_data)), 0, seed,
                                             spec, None, False))
    # a prior-guided model is validated on the kind of priors it trains on (on clean faces)
    valid_priors = None
    prior_names = tuple(k for k in LANDMARK_AUX if k in getattr(model, "extra_inputs", {}))
    priors_note = None
    if prior_names and recipe_obj.train_priors == "runtime":
        from training.runtime_priors import RuntimePriors

        source.priors = RuntimePriors()
        priors_note = source.priors.describe()
        tqdm.write(priors_note)
        feeds = [source.priors(list(valid_data.images[s:s + 256]), prior_names, spec.size)
                 for s in range(0, len(valid_data), 256)]
        valid_priors = {k: torch.from_numpy(np.concatenate([f[k] for f in feeds]).astype(
            np.int64 if k == "parsing" else np.float32)) for k in prior_names}
    elif prior_names and valid_data.landmarks68 is not None:
        _, extras = augment_batch(valid_data.images, range(len(valid_data)), 0, seed, spec, None,
                                  False, aux=prior_names, landmarks68=valid_data.landmarks68)
        valid_priors = {k: torch.from_numpy(v) for k, v in extras.items()}
    board = _tensorboard(out_dir)
    interactive = sys.stderr.isatty()

    while (state.epoch < recipe_obj.epochs and not state.stopped_early
           and (stop_after is None or state.epoch < stop_after)):
        epoch = state.epoch
        batches = epoch_batches(len(train_data), batch_size, epoch, seed)
        loader = torch.utils.data.DataLoader(
            source, batch_size=None, sampler=batches, num_workers=n_workers,
            prefetch_factor=4 if n_workers else None, worker_init_fn=_worker_init,
            generator=torch.Generator().manual_seed(seed), pin_memory=torch_device.type == "cuda")
        model.train()
        seen, correct, loss_sum, epoch_start = 0, 0, 0.0, time.perf_counter()
        bar = tqdm(loader, total=len(batches), desc=f"epoch {epoch + 1}/{recipe_obj.epochs}",
                   unit="batch", disable=not progress, file=sys.stderr, dynamic_ncols=True,
                   mininterval=0.5 if interactive else 30.0)
        for batch_index, (x, target, *extras) in enumerate(bar):
            if hasattr(model, "set_progress"):  # see the contract in models/__init__.py
                model.set_progress((epoch * len(batches) + batch_index)
                                   / (recipe_obj.epochs * len(batches)))
            x = x.to(torch_device, non_blocking=True).contiguous(memory_format=memory_format)
            target = target.to(torch_device, non_blocking=True)
            with torch.autocast(torch_device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                if extras:  # Recipe.aux: the model's training_loss takes them as `aux`
                    aux = {k: v.to(torch_device, non_blocking=True) for k, v in extras[0].items()}
                    loss, logits = model.training_loss(x, target, recipe_obj.label_smoothing,
                                                       aux=aux)
                    loss = loss.float()
                elif hasattr(model, "training_loss"):  # see the contract in models/__init__.py
                    loss, logits = model.training_loss(x, target, recipe_obj.label_smoothing)
                    loss = loss.float()
                else:
                    logits = model(x)
                    loss = loss_fn(logits.float(), target, recipe_obj.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            hard = target if target.ndim == 1 else target.argmax(1)
            seen += len(x)
            correct += int((logits.argmax(1) == hard).sum())
            loss_sum += float(loss.detach()) * len(x)
            rate = seen / max(1e-9, time.perf_counter() - epoch_start)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen * 100:.1f}",
                            img_s=f"{rate:.0f}", refresh=False)
        bar.close()
        seconds = time.perf_counter() - epoch_start
        val_loss, val_acc = evaluate_torch(model, valid_x, valid_data.labels, torch_device,
                                           eval_dtype, priors=valid_priors)
        state.epoch += 1
        state.train_seconds += seconds
        improved = val_acc > state.best_acc
        if improved:
            state.best_acc, state.best_epoch, state.stale = val_acc, state.epoch, 0
        else:
            state.stale += 1
        state.stopped_early = state.stale >= recipe_obj.patience
        row = {"epoch": state.epoch, "lr": optimizer.param_groups[0]["lr"],
               "train_loss": round(loss_sum / max(1, seen), 5),
               "train_acc": round(correct / max(1, seen) * 100, 3),
               "val_loss": round(val_loss, 5), "val_acc": round(val_acc, 3),
               "best_val_acc": round(state.best_acc, 3), "images": seen,
               "seconds": round(seconds, 1), "img_per_s": round(seen / max(1e-9, seconds), 1),
               "finished": dt.datetime.now().isoformat(timespec="seconds")}
        state.history.append(row)
        payload = {"model": model.state_dict(), "model_name": model_name, "model_cfg": model_cfg,
                   "classes": list(classes), "input_spec": spec.to_manifest(),
                   "recipe": recipe_obj.to_dict(), "identity": identity,
                   "data_root": str(data_root), "epoch": state.epoch}
        if improved:
            save_atomic(payload, best_path)
        save_atomic({**payload, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "state": asdict(state), "rng": rng_states()}, last_path)
        write_metrics_csv(state.history, out_dir / "metrics.csv")
        if board is not None:
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "img_per_s"):
                board.add_scalar(key, row[key], state.epoch)
        tqdm.write(f"epoch {state.epoch}/{recipe_obj.epochs}: train loss {row['train_loss']:.4f} "
                   f"acc {row['train_acc']:.2f}% | valid loss {val_loss:.4f} acc {val_acc:.2f}% "
                   f"(best {state.best_acc:.2f}% @ {state.best_epoch}) | "
                   f"{row['img_per_s']:.0f} img/s, {seconds / 60:.1f} min"
                   + (" | early stop" if state.stopped_early else ""))
    if board is not None:
        board.close()

    done = state.epoch >= recipe_obj.epochs or state.stopped_early
    if not finalize or not done:
        return last_path
    from training.calibration import class_prior

    prior = class_prior(train_data.soft, train_data.labels, len(classes))
    return finalize_run(
        out_dir=out_dir, name=name, dataset=dataset, data_root=data_root, valid=valid_data,
        prior=prior,
        train_count=len(train_data), state=state, recipe=recipe_obj, command=command,
        device=device, test_limit=test_limit, register=register, manifest=manifest,
        occlusion_dir=occlusion_dir, build_occluded=build_occluded, occlusion_aug=occlusion_aug,
        wall_seconds=time.perf_counter() - started_wall,
        notes=[n for n in (landmark_note, distill_note, priors_note) if n], teacher=teacher)


def _equivalent_command(model_name: str, dataset: str, data_root: Path, recipe: str, device: str,
                        epochs: int | None, resume: bool, out_dir: Path, occlusion_aug: bool,
                        limit: int | None, seed: int) -> str:
    parts = ["occlufer", "train", "--model", model_name, "--dataset", dataset, "--data-root",
             str(data_root), "--recipe", recipe, "--device", device, "--out", str(out_dir)]
    if epochs is not None:
        parts += ["--epochs", str(epochs)]
    if limit is not None:
        parts += ["--limit", str(limit)]
    if seed:
        parts += ["--seed", str(seed)]
    if not occlusion_aug:
        parts.append("--no-occlusion-aug")
    if resume:
        parts.append("--resume")
    return shlex.join(parts)


# --------------------------------------------------------------------------- after training
#: mirror averaging is kept only when it gains this many points of validation accuracy
FLIP_TTA_MIN_GAIN = 0.5


def wrapper_logits(model: nn.Module, images: np.ndarray, spec: InputSpec, flip: bool,
                   batch: int = 256) -> np.ndarray:
    """The exported graph's logits (before any post-hoc correction) in fp32 torch, optionally
    averaged with the mirror image's, exactly as `ProbsAndCam` computes them."""
    from app.pipeline.preprocess import prepare_batch
    from exporters.classifier import ProbsAndCam

    wrapper = ProbsAndCam(model.eval().cpu()).eval()
    chunks = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = torch.from_numpy(prepare_batch(list(images[start:start + batch]), spec))
            logits = wrapper.all_outputs(x)[0]
            if flip:
                logits = (logits + wrapper.all_outputs(torch.flip(x, dims=(3,)))[0]) / 2
            chunks.append(logits.float().numpy())
    return np.concatenate(chunks)


def shifted_validation(dataset: str, data_root: Path, valid: SplitArrays
                       ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, images, labels) of the validation faces under each occluder and camera
    degradation, in `valid`'s order, for the temperature fit (`training.calibration`);
    built once where missing (`training.evaluate.valid_copies`). Only FERPlus has them: a
    data set without its own validation split (a held-out slice of train) gets none, and
    its temperature is fitted on clean faces alone."""
    from training.evaluate import shifted_valid_images

    if dataset != "ferplus" or not valid.source.endswith(" valid") or not valid.names:
        return []
    return [(kind, images, valid.labels)
            for kind, images in shifted_valid_images(data_root, valid.names)]


def choose_posthoc(model: nn.Module, valid: SplitArrays, spec: InputSpec, recipe: Recipe,
                   prior: np.ndarray | None, classes: tuple[str, ...],
                   shifted: Sequence[tuple[str, np.ndarray, np.ndarray]] = ()):
    """The export's post-hoc step (`exporters.classifier.PostHoc`) and what chose it:
    mirror averaging if the recipe allows it and it pays on validation, then the logit
    adjustment (on the clean faces) and the temperature (on them and their `shifted`
    copies) fitted on validation (`training.calibration`)."""
    from exporters.classifier import PostHoc
    from training.calibration import fit_calibration

    if not recipe.posthoc and recipe.flip_tta == "off":
        return PostHoc(), None, None
    plain = wrapper_logits(model, valid.images, spec, flip=False)
    tta = None
    flip = False
    if recipe.flip_tta == "auto":
        mirrored = wrapper_logits(model, valid.images, spec, flip=True)
        acc = {k: float(np.mean(v.argmax(1) == valid.labels) * 100.0)
               for k, v in (("off", plain), ("on", mirrored))}
        flip = acc["on"] - acc["off"] >= FLIP_TTA_MIN_GAIN
        tta = {"valid_accuracy_off": acc["off"], "valid_accuracy_on": acc["on"],
               "kept": flip, "min_gain": FLIP_TTA_MIN_GAIN}
        tqdm.write(f"mirror averaging: FER2013Valid {acc['off']:.2f}% -> {acc['on']:.2f}% "
                   f"({'kept' if flip else 'not kept'}: needs +{FLIP_TTA_MIN_GAIN} points "
                   "for twice the cost)")
        if flip:
            plain = mirrored
    if not recipe.posthoc:
        return PostHoc(flip_tta=flip), None, tta
    if prior is None:
        prior = np.full(len(classes), 1.0 / len(classes))
    shifted_logits = [(wrapper_logits(model, images, spec, flip=flip), labels)
                      for _, images, labels in shifted]
    calibration = fit_calibration(plain, valid.labels, prior, classes,
                                  prior_source=f"mean training target ({recipe.label_mode})",
                                  shifted=shifted_logits)
    before, after = calibration.valid["before"], calibration.valid["after"]
    tqdm.write(f"post-hoc on FER2013Valid: tau {calibration.tau:.2f}, T "
               f"{calibration.temperature:.3f}; accuracy {before['accuracy']:.2f} -> "
               f"{after['accuracy']:.2f}, macro-F1 {before['macro_f1']:.2f} -> "
               f"{after['macro_f1']:.2f}, ECE {before['ece']:.2f} -> {after['ece']:.2f}")
    return (PostHoc(logit_bias=tuple(calibration.logit_bias),
                    temperature=calibration.temperature, flip_tta=flip), calibration, tta)


def finalize_run(*, out_dir: Path, name: str, dataset: str, data_root: Path, valid: SplitArrays,
                 train_count: int, state: RunState, recipe: Recipe, command: str, device: str,
                 test_limit: int | None, register: bool, manifest: Path | None,
                 occlusion_dir: Path | None, build_occluded: bool, occlusion_aug: bool,
                 wall_seconds: float, notes: Sequence[str] = (), teacher=None,
                 prior: np.ndarray | None = None) -> Path:
    """Export the best weights (fp16 if it holds accuracy), evaluate, write the card, register.
    `notes` are extra lines for the card's training section (e.g. where landmarks came from);
    `teacher` is the landmark teacher for a prior-guided model's oracle-prior scores."""
    from exporters.classifier import export_classifier_report, load_checkpoint_model
    from app.pipeline.expression import prior_input_types
    from app.runtime.providers import create_session
    from training.evaluate import (PRIOR_SOURCES, available_test_sets, evaluate, model_metadata,
                                   predict)

    finalize_started = time.perf_counter()

    best_path = out_dir / "best.pt"
    model, checkpoint = load_checkpoint_model(best_path)
    spec = InputSpec.from_manifest(checkpoint["input_spec"])
    classes = tuple(checkpoint["classes"])
    shifted = shifted_validation(dataset, data_root, valid) if recipe.posthoc else []
    posthoc, calibration, tta = choose_posthoc(model, valid, spec, recipe, prior, classes,
                                               shifted)
    verify_n = min(256, len(valid))
    verify = dict(model_name=checkpoint["model_name"], source_checkpoint=best_path,
                  verify_images=list(valid.images[:verify_n]),
                  verify_labels=valid.labels[:verify_n],
                  extra_metadata={"recipe": recipe.name, "trained_on": dataset,
                                  "entry_name": name})
    exports, valid_acc = {}, {}
    for variant, fp16 in (("fp32", False), ("fp16", True)):
        path = out_dir / f"{name}_{variant}.onnx"
        exports[variant] = export_classifier_report(model, spec, classes, path, fp16=fp16,
                                                    posthoc=posthoc, **verify)
        session = create_session(path, "cpu")
        probs = predict(session, valid.images, spec, desc=f"valid {variant}")
        valid_acc[variant] = float(np.mean(probs.argmax(1) == valid.labels) * 100.0)
    use_fp16 = valid_acc["fp16"] >= valid_acc["fp32"] - FP16_TOLERANCE_POINTS
    chosen = "fp16" if use_fp16 else "fp32"
    final = out_dir / f"{name}.onnx"
    os.replace(out_dir / f"{name}_{chosen}.onnx", final)
    os.replace(out_dir / f"{name}_{chosen}.onnx.export.json", out_dir / f"{name}.onnx.export.json")
    other = "fp32" if use_fp16 else "fp16"
    (out_dir / f"{name}_{other}.onnx").unlink(missing_ok=True)
    (out_dir / f"{name}_{other}.onnx.export.json").unlink(missing_ok=True)
    tqdm.write(f"exported {final} ({chosen}; FER2013Valid fp32 {valid_acc['fp32']:.2f}% "
               f"fp16 {valid_acc['fp16']:.2f}%)")

    reports: dict[str, dict[str, Any]] = {}
    # a prior-guided model is scored on the priors the app feeds it ("runtime"), and also on
    # perfect ("oracle") and no ("template") priors: what perception costs, what priors give
    session = create_session(final, "cpu")
    sources = PRIOR_SOURCES if prior_input_types(session) else ("runtime",)
    prior_reports: dict[str, dict[str, dict[str, Any]]] = {s: {} for s in sources[1:]}
    kinds: list[str | None] = [None]
    if dataset.lower() == "ferplus":
        from training.occlusion import EVALUATED_SETS

        kinds += available_test_sets(data_root, EVALUATED_SETS, occlusion_dir, build_occluded)
    for kind in kinds:
        label = kind or "clean"
        for source in sources:
            suffix = "" if source == "runtime" else f"_{source}_priors"
            try:
                report = evaluate(final, dataset, data_root, "test", occlusion=kind,
                                  occlusion_dir=occlusion_dir,
                                  report_dir=out_dir / "reports" / f"test_{label}{suffix}",
                                  limit=test_limit, build_occluded=False, priors=source,
                                  teacher=teacher)
            except DatasetError as exc:
                tqdm.write(f"no test split evaluated: {exc}")
                break
            (reports if source == "runtime" else prior_reports[source])[label] = report
    for kind, report in reports.items():
        tqdm.write(f"test {kind}: {report['accuracy']:.2f}% (macro-F1 {report['macro_f1']:.2f}, "
                   f"n={report['n']})")

    outputs = json.loads(model_metadata(session)[2].get("outputs", "{}"))
    feature_map = outputs.get("cam", "")
    card = write_card(out_dir / f"{name}.md", name=name, checkpoint=checkpoint, recipe=recipe,
                      command=command, dataset=dataset, data_root=data_root,
                      train_count=train_count, valid=valid, state=state, device=device,
                      wall_seconds=wall_seconds + time.perf_counter() - finalize_started,
                      reports=reports, valid_acc=valid_acc,
                      chosen=chosen, export=exports[chosen], final=final,
                      occlusion_aug=occlusion_aug, outputs=feature_map,
                      params=sum(p.numel() for p in model.parameters()), notes=notes,
                      prior_reports=prior_reports, calibration=calibration, tta=tta)
    if register:
        publish(name, final, card, spec, classes, recipe.description, reports, dataset,
                manifest)
    return final


def write_card(path: Path, *, name: str, checkpoint: dict, recipe: Recipe, command: str,
               dataset: str, data_root: Path, train_count: int, valid: SplitArrays,
               state: RunState, device: str, wall_seconds: float,
               reports: dict[str, dict[str, Any]], valid_acc: dict[str, float], chosen: str,
               export: Any, final: Path, occlusion_aug: bool, outputs: str,
               params: int, notes: Sequence[str] = (),
               prior_reports: dict[str, dict[str, dict[str, Any]]] | None = None,
               calibration=None, tta: dict[str, Any] | None = None) -> Path:
    """A model card in the OpenCV Zoo / py-feat spirit: what it is, how it was made, how good."""
    from training.evaluate import sha256_file

    occlusion_text = (f"on (p_clean {recipe.augment.occlusion_p_clean})" if occlusion_aug
                      else "off")
    lines = [
        f"# {name} — facial expression classifier",
        "",
        "| | |",
        "|---|---|",
        f"| Network | `{checkpoint['model_name']}` {checkpoint['model_cfg']} |",
        f"| Recipe | `{recipe.name}`: {recipe.description} |",
        *([f"| Substitutions | {recipe.substitutions} |"] if recipe.substitutions else []),
        f"| Classes | {', '.join(checkpoint['classes'])} |",
        f"| Input | `input` (N, 3, {recipe.size}, {recipe.size}) float32, "
        f"{checkpoint['input_spec']['color']} replicated to 3 channels, (x - 127.5) / 127.5 |",
        f"| Outputs | `probs` (N, C) softmax; `cam` {outputs} |",
        f"| File | `{final.name}` ({chosen} weights, {final.stat().st_size / 1e6:.1f} MB, "
        f"sha256 `{sha256_file(final)}`) |",
        f"| Licence | {LICENCE} |",
        "",
    ]
    lines += report_lines(reports, dataset)
    if prior_reports:
        kinds = list(reports)
        lines += ["", "Accuracy by where the priors come from (`occlufer eval --priors ...`): "
                  "runtime (the table above) = the landmark student's points and the occlusion "
                  "network's map on the test face, as the app feeds them; oracle = the FaceMesh "
                  "teacher on the clean face and the occluder's true mask (what training saw); "
                  "template = no priors (the export's FERPlus-template defaults).", "",
                  "| Priors | " + " | ".join(kinds) + " |", "|---" * (len(kinds) + 1) + "|",
                  "| runtime | " + " | ".join(f"{reports[k]['accuracy']:.2f}" for k in kinds)
                  + " |"]
        for source, by_kind in prior_reports.items():
            lines.append(f"| {source} | " + " | ".join(
                f"{by_kind[k]['accuracy']:.2f}" if k in by_kind else "–" for k in kinds) + " |")
    lines += posthoc_lines(calibration, tta)
    lines += [
        "",
        f"Best FER2013Valid accuracy during training (torch): {state.best_acc:.2f} % at epoch "
        f"{state.best_epoch}. ONNX on FER2013Valid: fp32 {valid_acc['fp32']:.2f} %, "
        f"fp16 {valid_acc['fp16']:.2f} % (shipped: {chosen}; fp16 is kept when it is within "
        f"{FP16_TOLERANCE_POINTS} points). Export check on {export.batch} validation faces: "
        f"max |ONNX - torch| probs {export.max_abs_diff_probs:.2g}, cam "
        f"{export.max_abs_diff_cam:.2g}.",
        "",
        "Per-class accuracy (clean test): " + (", ".join(
            f"{c} {v:.1f} %" for c, v in reports["clean"]["per_class_accuracy"].items()
            if v is not None) if "clean" in reports else "n/a") + ".",
        "",
        "Reproduce the evaluation: `occlufer eval --model " + name + " --dataset " + dataset +
        " --root DATA_ROOT --report reports/" + name + "` (add `--occlusion masked` etc.).",
        "",
        "## Training",
        "",
        f"- Command: `{first_command(state, command)}`",
        f"- Code: {code_versions(state)}",
        f"- Data: {dataset} at `{_relative_to_repo(data_root)}` (DATA_ROOT); {train_count} training images "
        f"(label mode {recipe.label_mode}), {len(valid)} validation images ({valid.source}); "
        f"synthetic occlusion augmentation {occlusion_text}",
        f"- Epochs: {state.epoch} of {recipe.epochs}"
        f"{' (early stop, patience ' + str(recipe.patience) + ')' if state.stopped_early else ''};"
        f" batch {recipe.batch_size}, {recipe.optimizer} lr {recipe.lr} {recipe.schedule}, "
        f"wd {recipe.weight_decay}, label smoothing {recipe.label_smoothing}",
        f"- Hardware: {training_hardware(state, device)}",
        f"- Wall time: training {state.train_seconds / 60:.1f} min over all sessions; "
        f"this session incl. export and evaluation {wall_seconds / 60:.1f} min",
        f"- Throughput: {np.mean([r['img_per_s'] for r in state.history]):.0f} img/s mean "
        "(training, augmentation included)" if state.history else "- Throughput: n/a",
        f"- Parameters: {params:,}",
        *[f"- {note[:1].upper()}{note[1:]}" for note in notes],
        "",
        "## Epochs",
        "",
        "| epoch | lr | train loss | train acc | valid loss | valid acc | img/s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['epoch']} | {r['lr']:.4g} | {r['train_loss']:.4f} | {r['train_acc']:.2f} | "
              f"{r['val_loss']:.4f} | {r['val_acc']:.2f} | {r['img_per_s']:.0f} |"
              for r in state.history]
    lines += ["", "## Limits", "",
              "FERPlus faces are 48 px grayscale, frontal-ish crops; the synthetic occluders are "
              "procedural drawings, so accuracy on real occlusions may differ. Trained on a "
              "small CPU budget (recipe `fast`) unless stated otherwise above. The occluded "
              "test sets come from the same procedural occluder family as the training "
              "augmentation (fixed seeds, different draws), so they measure robustness to "
              "these occluders, not to real-world occlusion in general.", ""]
    path.write_text("\n".join(lines))
    return path


def report_lines(reports: dict[str, dict[str, Any]], dataset: str) -> list[str]:
    """The card's accuracy table (every test set, with ECE and the rare classes) and, for a
    model with its own occlusion map, how well that map finds the occluder."""
    lines = [
        "## Accuracy",
        "",
        "| Test set | Accuracy | Macro-F1 | ECE | disgust / contempt recall | n |",
        "|---|---|---|---|---|---|",
    ]
    from training.degrade import TEST_SETS as DEGRADED_SETS

    for kind, report in reports.items():
        label = "FERPlus test (clean)" if kind == "clean" else (
            f"FERPlus test, camera-degraded: {kind}" if kind in DEGRADED_SETS
            else f"FERPlus test + synthetic {kind}")
        if dataset.lower() != "ferplus":
            label = f"{dataset} test"
        rare = " / ".join(f"{report['per_class_accuracy'][c]:.1f}"
                          if report["per_class_accuracy"].get(c) is not None else "–"
                          for c in ("disgust", "contempt"))
        ece = f"{report['ece']:.2f} %" if report.get("ece") is not None else "–"
        lines.append(f"| {label} | {report['accuracy']:.2f} % | {report['macro_f1']:.2f} | "
                     f"{ece} | {rare} | {report['n']} |")
    if not reports:
        lines.append("| (no test split evaluated) | | | |")
    maps = {k: r["occlusion_map"] for k, r in reports.items() if r.get("occlusion_map")}
    if maps:
        lines += ["", "Its own occlusion map (output `occlusion`, upsampled to 48 px, P > 0.5) "
                  "against the occluder's true mask - what the app shows as the occlusion "
                  "overlay while this model is active:", "",
                  "| Test set | pixel IoU | F1 | precision | recall |", "|---|---|---|---|---|"]
        for kind, m in maps.items():
            if "iou" in m:
                lines.append(f"| {kind} | {m['iou'] * 100:.1f} | {m['f1'] * 100:.1f} | "
                             f"{m['precision'] * 100:.1f} | {m['recall'] * 100:.1f} |")
            else:
                lines.append(f"| {kind} (no occluder) | false-positive pixels "
                             f"{m['pixel_false_positive_rate'] * 100:.2f} % | | | |")
    return lines


def posthoc_lines(calibration, tta: dict[str, Any] | None) -> list[str]:
    """The card's post-hoc section: mirror averaging, and the logit adjustment and
    temperature with their tau table (empty when neither was fitted)."""
    lines: list[str] = []
    if calibration is not None or tta is not None:
        lines += ["", "## Post-hoc: class balance, calibration, mirror averaging", ""]
    if tta is not None:
        lines.append(f"Mirror averaging (the face and its mirror image, logits averaged): "
                     f"FER2013Valid {tta['valid_accuracy_off']:.2f} % without, "
                     f"{tta['valid_accuracy_on']:.2f} % with; "
                     f"{'kept' if tta['kept'] else 'not kept'} (kept only for a gain of at "
                     f"least {tta['min_gain']} points, since it doubles the expression stage).")
        lines.append("")
    if calibration is not None:
        before, after = calibration.valid["before"], calibration.valid["after"]
        lines += [
            f"Folded into the graph: `probs = softmax((logits - {calibration.tau:.2f} · log prior)"
            f" / {calibration.temperature:.3f})`, both fitted on FER2013Valid "
            f"(n = {calibration.valid['n']}), never on test (`training/calibration.py`): the "
            "logit adjustment (Menon et al. 2021) by the largest accuracy + macro-F1, then "
            "the temperature (Guo et al. 2017) by the smallest NLL"
            + (f" over the clean faces (half the weight) and their copies under "
               f"{calibration.valid['shifted']['sets']} occluders and camera degradations "
               f"(n = {calibration.valid['shifted']['n']}; ECE there "
               f"{calibration.valid['shifted']['ece_before']:.2f} → "
               f"{calibration.valid['shifted']['ece_after']:.2f} %)"
               if "shifted" in calibration.valid else " on the clean faces")
            + f". Prior: {calibration.prior_source}.",
            "",
            "| FER2013Valid | accuracy | macro-F1 | NLL | ECE |", "|---|---|---|---|---|",
            f"| network's own softmax | {before['accuracy']:.2f} | {before['macro_f1']:.2f} | "
            f"{before['nll']:.4f} | {before['ece']:.2f} % |",
            f"| shipped (adjusted + temperature) | {after['accuracy']:.2f} | "
            f"{after['macro_f1']:.2f} | {after['nll']:.4f} | {after['ece']:.2f} % |",
            "",
            "Logit adjustment on FER2013Valid (tau 0 = none):", "",
            "| tau | accuracy | macro-F1 | disgust recall | contempt recall |",
            "|---|---|---|---|---|",
        ]
        for row in calibration.tau_table[::2]:
            rare = [row["recall"].get(c) for c in ("disgust", "contempt")]
            lines.append(f"| {row['tau']:.1f} | {row['accuracy']:.2f} | {row['macro_f1']:.2f} | "
                         + " | ".join("–" if v is None else f"{v:.1f}" for v in rare) + " |")
    return lines


def publish(name: str, onnx_path: Path, card: Path, spec: InputSpec, classes: tuple[str, ...],
            description: str, reports: dict[str, dict[str, Any]], dataset: str,
            manifest: Path | None) -> Path:
    """Copy the ONNX and card beside the manifest (`models/`, `cards/`) and register them."""
    from app.runtime.store import default_manifest_path
    from exporters.manifest import copy_into_assets, register_model_entry
    from training.evaluate import sha256_file

    manifest_path = Path(manifest) if manifest else default_manifest_path()
    onnx_copy, _ = copy_into_assets(name, onnx_path, card, manifest_path)
    accuracy = ", ".join(f"{k} {v['accuracy']:.2f} %" for k, v in reports.items())
    entry = {
        "task": "expression",
        "file": f"models/{name}.onnx",
        "sha256": sha256_file(onnx_copy),
        "licence": LICENCE,
        "description": f"{description}. Test accuracy ({dataset}): {accuracy or 'n/a'}.",
        "sources": [{"kind": "asset"}],
        "input": spec.to_manifest(),
        "classes": list(classes),
        "outputs": ["probs", "cam"],
        "card": f"cards/{name}.md",
        "metrics": {k: {"accuracy": round(v["accuracy"], 2), "macro_f1": round(v["macro_f1"], 2),
                        "n": v["n"]} for k, v in reports.items()},
    }
    return register_model_entry(name, entry, manifest_path)
