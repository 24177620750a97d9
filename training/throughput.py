"""Training throughput of one short ResNet-18 epoch, through the real trainer.

`python -m training.throughput --device cuda --limit 4000 --json OUT` runs `training.trainer.
train()` for one epoch on the first `limit` FERPlus training faces (the trainer's own data
loading, augmentation workers, pinned memory and AMP: bf16 where the GPU supports it, else fp16
with a GradScaler) into a temporary folder, with no export, registration or model card, and
reports images per second from the trainer's own metrics.csv. It is what `occlufer gpu-check`
runs in a child process, so the runtime (`app/`) never imports torch, and a runtime-only
install reports the step as skipped instead of failing.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path


def measure(data_root: Path, device: str = "cuda", recipe: str = "paper", limit: int = 4000,
            workers: int | None = None, val_limit: int = 256) -> dict:
    """One epoch of `resnet18` with `recipe` on `limit` faces; the trainer's img/s and what
    ran it (torch version, GPU, AMP dtype)."""
    import torch

    from training.trainer import hardware, train

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="occlufer-throughput-") as tmp:
        train("resnet18", "ferplus", data_root, recipe, device=device, epochs=1,
              out_dir=Path(tmp) / "run", limit=limit, workers=workers, val_limit=val_limit,
              finalize=False, register=False, progress=False)
        with open(Path(tmp) / "run" / "metrics.csv", newline="") as handle:
            row = list(csv.DictReader(handle))[-1]
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    amp = None
    if cuda:
        amp = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return {"model": "resnet18", "recipe": recipe, "device": "cuda" if cuda else "cpu",
            "images": int(row["images"]), "epoch_s": float(row["seconds"]),
            "img_per_s": float(row["img_per_s"]), "amp": amp, "pin_memory": cuda,
            "workers": workers, "val_limit": val_limit, "torch": torch.__version__,
            "hardware": hardware("cuda" if cuda else "cpu"),
            "wall_s": round(time.perf_counter() - started, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Images/s of one short ResNet-18 epoch.")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda", "auto"))
    parser.add_argument("--recipe", default="paper", help="resnet18 recipe (paper: 64 px, batch 128)")
    parser.add_argument("--limit", type=int, default=4000, help="training faces in the epoch")
    parser.add_argument("--workers", type=int, default=None,
                        help="augmentation workers (default: the trainer's)")
    parser.add_argument("--val-limit", type=int, default=256)
    parser.add_argument("--json", type=Path, help="write the result here (else stdout)")
    args = parser.parse_args(argv)
    result = measure(args.data_root, args.device, args.recipe, args.limit, args.workers,
                     args.val_limit)
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
