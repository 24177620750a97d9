"""Training on a machine that sees neither `../shared` nor the shipped models: a lent GPU.

Such a machine gets a copy of the repository's working tree and at most 64 MiB besides, and
sends back at most eight files of 16 MiB. FERPlus's PNGs (81 MB for train + valid) and the
18 MB ensemble teacher do not fit; what the trainer needs of them does:

- `pack`: the train and valid faces, decoded once here (48x48 gray, lossless), their names and
  label files, compressed with LZMA, plus the teacher's cached targets for the training faces
  (`training.distill`, keyed by the teacher's sha256, which the manifest holds);
- `unpack` (there): the official FERPlus layout again, byte-identical faces, so the trainer
  and its data cache run unchanged and the teacher's cache key matches;
- `remote` (there): unpack, a probe epoch that measures the machine, as many epochs of the
  recipe as fit the lease (never more than the recipe's), the run with `--no-finalize`, then
  `slim`;
- `slim`: best.pt and last.pt in fp16 (the shipped ONNX is fp16 anyway) and without the
  optimizer's moments (a finished run never uses them; AdamW's are twice the model), cut
  into parts that fit the way back;
- `join` (here): the parts back into best.pt and last.pt, so that `occlufer train ... --resume`
  finds every epoch done and only exports, evaluates and writes the card, on this machine,
  with the GPU's sessions (commit, precision, hardware, command) in the card.
"""

from __future__ import annotations

import argparse
import csv
import io
import lzma
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.errors import OccluferError
from training.data.ferplus import LABEL_FILE, SPLIT_FOLDERS, read_votes

PACK_FILE = "ferplus.npz"
TARGETS_DIR = "teacher_targets"
PARTS_PREFIX = "checkpoints.pt.part"
PART_BYTES = 15 * 2**20  # under the way back's 16 MiB per file
SPLITS = {split: SPLIT_FOLDERS[split] for split in ("train", "valid")}  # test stays here


# --------------------------------------------------------------------------- data
def pack(data_root: Path, out_dir: Path, targets: Sequence[Path] = ()) -> Path:
    """Write `out_dir/ferplus.npz` (faces of every split in `SPLITS`, LZMA-compressed) and copy
    the teacher `targets` (.npy cache files) beside it."""
    import cv2

    out_dir.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for split, folder in SPLITS.items():
        names, _ = read_votes(data_root, split)  # the reader's own checks of the layout
        text = (data_root / folder / LABEL_FILE).read_bytes()
        faces = np.zeros((len(names), 48, 48), np.uint8)
        for i, name in enumerate(names):
            face = cv2.imread(str(data_root / folder / name), cv2.IMREAD_UNCHANGED)
            if face is None or face.shape != (48, 48) or face.dtype != np.uint8:
                raise OccluferError(f"cannot pack {data_root / folder / name}: not a 48x48 "
                                    "8-bit gray PNG")
            faces[i] = face
        arrays[f"{split}_names"] = np.asarray(names)
        arrays[f"{split}_faces"] = np.frombuffer(lzma.compress(faces.tobytes(), preset=9),
                                                 np.uint8)
        arrays[f"{split}_shape"] = np.asarray(faces.shape)
        arrays[f"{split}_labels"] = np.frombuffer(text, np.uint8)
    path = out_dir / PACK_FILE
    np.savez(path, **arrays)
    if targets:
        (out_dir / TARGETS_DIR).mkdir(exist_ok=True)
        for target in targets:
            shutil.copy2(target, out_dir / TARGETS_DIR / Path(target).name)
    return path


def unpack(pack_file: Path, data_root: Path) -> int:
    """Write the official FERPlus layout under `data_root` from a pack; returns the faces."""
    import cv2

    count = 0
    with np.load(pack_file, allow_pickle=False) as packed:
        for split, folder in SPLITS.items():
            target = data_root / folder
            target.mkdir(parents=True, exist_ok=True)
            shape = tuple(int(v) for v in packed[f"{split}_shape"])
            faces = np.frombuffer(lzma.decompress(packed[f"{split}_faces"].tobytes()),
                                  np.uint8).reshape(shape)
            for name, face in zip(packed[f"{split}_names"], faces):
                if not cv2.imwrite(str(target / str(name)), face):
                    raise OccluferError(f"cannot write {target / str(name)}")
            (target / LABEL_FILE).write_bytes(packed[f"{split}_labels"].tobytes())
            count += len(faces)
    return count


# --------------------------------------------------------------------------- checkpoints
def _half(obj):
    """Floating tensors in fp16, everything else as it is (recursively)."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _half(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_half(v) for v in obj)
    return obj


def _float(obj):
    """The inverse of `_half` for a model's state: fp16 tensors back to fp32."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.float() if obj.dtype == torch.float16 else obj
    if isinstance(obj, dict):
        return {k: _float(v) for k, v in obj.items()}
    return obj


def slim(run_dir: Path, out_dir: Path) -> list[Path]:
    """best.pt + last.pt of `run_dir` as fp16 parts of at most `PART_BYTES` in `out_dir`."""
    import torch

    bundle = {}
    for name in ("best.pt", "last.pt"):
        path = run_dir / name
        if not path.is_file():
            raise OccluferError(f"{path} is missing: nothing to bring back")
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        checkpoint["model"] = _half(checkpoint["model"])
        if "optimizer" in checkpoint:
            checkpoint["optimizer"] = {"state": {},
                                       "param_groups": checkpoint["optimizer"]["param_groups"]}
        bundle[name] = checkpoint
    buffer = io.BytesIO()
    torch.save(bundle, buffer)
    data = buffer.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    for index, start in enumerate(range(0, len(data), PART_BYTES)):
        part = out_dir / f"{PARTS_PREFIX}{index}"
        part.write_bytes(data[start:start + PART_BYTES])
        parts.append(part)
    return parts


def join(parts_dir: Path, run_dir: Path) -> list[Path]:
    """The parts in `parts_dir` back into `run_dir`/best.pt and last.pt (fp32 weights; last.pt
    without optimizer moments, which `--resume` of a finished run never uses)."""
    import torch

    from training.trainer import save_atomic

    parts = sorted(parts_dir.glob(f"{PARTS_PREFIX}*"),
                   key=lambda p: int(p.name[len(PARTS_PREFIX):]))
    if not parts:
        raise OccluferError(f"no {PARTS_PREFIX}N files in {parts_dir}")
    bundle = torch.load(io.BytesIO(b"".join(p.read_bytes() for p in parts)),
                        map_location="cpu", weights_only=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, checkpoint in bundle.items():
        checkpoint["model"] = _float(checkpoint["model"])
        save_atomic(checkpoint, run_dir / name)
        written.append(run_dir / name)
    return written


# --------------------------------------------------------------------------- the lease
def plan_epochs(images: int, probe_img_s: float, seconds_left: float, per_epoch_extra: float,
                max_epochs: int) -> int:
    """How many epochs of `images` fit in `seconds_left` at the probe's rate (0 = none)."""
    per_epoch = images / max(probe_img_s, 1e-9) + per_epoch_extra
    return max(0, min(max_epochs, math.floor(seconds_left / per_epoch)))


def _train_command(model: str, recipe: str, data_root: Path, out: Path, device: str,
                   workers: int, extra: Sequence[str]) -> list[str]:
    return [sys.executable, "-m", "app.cli", "train", "--model", model, "--dataset", "ferplus",
            "--data-root", str(data_root), "--recipe", recipe, "--device", device,
            "--workers", str(workers), "--out", str(out), "--no-register", "--no-finalize",
            *extra]


def _probe_rate(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    return float(rows[-1]["img_per_s"])


def remote(pack_dir: Path, data_root: Path, out: Path, *, model: str, recipe: str,
           teachers: Sequence[str], deadline_s: float, device: str = "cuda",
           workers: int | None = None, probe_images: int = 0,
           max_epochs: int | None = None, limit: int | None = None) -> int:
    """Everything a lease runs, against a deadline counted from now; logs and parts in `out`."""
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "remote.log").open("a")

    def say(text: str) -> None:
        line = f"[{time.monotonic() - started:6.1f}s] {text}"
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    workers = workers if workers is not None else max(1, (os.cpu_count() or 2) - 2)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cache = Path(env.setdefault("OCCLUFER_CACHE", str(Path("/tmp/occlufer-cache"))))
    if (pack_dir / TARGETS_DIR).is_dir():
        shutil.copytree(pack_dir / TARGETS_DIR, cache / TARGETS_DIR, dirs_exist_ok=True)
    say(f"unpacked {unpack(pack_dir / PACK_FILE, data_root)} faces into {data_root}")
    from training.recipes import get_recipe
    from training.data.ferplus import index

    recipe_obj = get_recipe(model, recipe)
    epochs_cap = max_epochs or recipe_obj.epochs
    n_total = len(index(data_root, "train", recipe_obj.label_mode).names)
    n_train = min(n_total, limit) if limit else n_total  # limit: a dry run on a few faces

    probe_dir = Path("/tmp/occlufer-probe")
    shutil.rmtree(probe_dir, ignore_errors=True)
    # a whole epoch by default: each epoch starts its augmentation workers afresh, and a short
    # probe would charge that start to too few faces and plan too few epochs
    probe_images = min(probe_images, n_train) if probe_images else n_train
    probe = _train_command(model, recipe, data_root, probe_dir, device, workers,
                           ["--epochs", "1"] + (["--limit", str(probe_images)]
                                                if probe_images < n_total else []))
    tick = time.monotonic()
    with (out / "probe.log").open("w") as probe_log:
        rc = subprocess.run(probe, env=env, stdout=probe_log, stderr=subprocess.STDOUT).returncode
    probe_wall = time.monotonic() - tick
    if rc != 0:
        say(f"probe failed (exit {rc}); see probe.log")
        return rc
    rate = _probe_rate(probe_dir)
    startup = max(0.0, probe_wall - probe_images / rate)
    left = deadline_s - (time.monotonic() - started) - startup - 45.0  # 45 s: slim + way back
    epochs = plan_epochs(n_train, rate, left, per_epoch_extra=3.0, max_epochs=epochs_cap)
    say(f"probe: {rate:.0f} img/s on {probe_images} faces, {probe_wall:.0f} s wall "
        f"(startup ~{startup:.0f} s); {left:.0f} s left for epochs of {n_train} faces "
        f"-> {epochs} epochs (cap {epochs_cap})")
    if epochs == 0:
        return 3
    extra = (["--epochs", str(epochs)] + (["--limit", str(limit)] if limit else [])
             + (["--teacher", *teachers] if teachers else []))
    from training.trainer import default_entry_name

    run_dir = Path("runs") / default_entry_name(model, recipe, "ferplus", True, bool(teachers))
    command = _train_command(model, recipe, data_root, run_dir, device, workers, extra)
    say("train: " + shlex.join(command))
    budget = deadline_s - (time.monotonic() - started) - 30.0
    with (out / "train.log").open("w") as train_log:
        try:
            rc = subprocess.run(command, env=env, stdout=train_log, stderr=subprocess.STDOUT,
                                timeout=budget).returncode
        except subprocess.TimeoutExpired:
            rc = 124
            say(f"training stopped at the deadline ({budget:.0f} s); last.pt holds the last "
                "finished epoch (resume it with --resume)")
    say(f"train exit {rc}")
    if (run_dir / "metrics.csv").is_file():
        shutil.copy2(run_dir / "metrics.csv", out / "metrics.csv")
    if (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file():
        parts = slim(run_dir, out)
        say(f"slimmed into {len(parts)} parts, "
            f"{sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB")
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.offload", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack", help="FERPlus train+valid (+ teacher targets) into one folder")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--targets", type=Path, nargs="*", default=[],
                   help="cached teacher-target .npy files to bring along")
    p = sub.add_parser("unpack", help="a pack back into the FERPlus layout")
    p.add_argument("pack", type=Path)
    p.add_argument("--data-root", type=Path, required=True)
    p = sub.add_parser("slim", help="best.pt + last.pt into fp16 parts")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("join", help="fp16 parts back into best.pt + last.pt")
    p.add_argument("parts_dir", type=Path)
    p.add_argument("--run-dir", type=Path, required=True)
    p = sub.add_parser("remote", help="what a lease runs: unpack, probe, train, slim")
    p.add_argument("--pack", type=Path, required=True, help="the folder `pack` wrote")
    p.add_argument("--data-root", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", required=True)
    p.add_argument("--teacher", nargs="*", default=[])
    p.add_argument("--deadline", type=float, required=True, help="seconds from now")
    p.add_argument("--device", default="cuda")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--probe-images", type=int, default=0,
                   help="faces in the probe epoch (default 0: the whole training set)")
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--limit", type=int, default=None, help="train on N faces (a dry run)")
    args = parser.parse_args(argv)
    try:
        if args.verb == "pack":
            path = pack(args.data_root, args.out, args.targets)
            print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
        elif args.verb == "unpack":
            print(f"unpacked {unpack(args.pack, args.data_root)} faces")
        elif args.verb == "slim":
            print("\n".join(str(p) for p in slim(args.run_dir, args.out)))
        elif args.verb == "join":
            print("\n".join(str(p) for p in join(args.parts_dir, args.run_dir)))
        else:
            return remote(args.pack, args.data_root, args.out, model=args.model,
                          recipe=args.recipe, teachers=args.teacher, deadline_s=args.deadline,
                          device=args.device, workers=args.workers,
                          probe_images=args.probe_images, max_epochs=args.max_epochs,
                          limit=args.limit)
    except OccluferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
