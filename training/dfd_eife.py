"""DFD-Net stage 1 as in the paper, for users who have RAF-DB: pre-train an EIFE on RAF-DB's
manual gender / race / age labels (Eqs. 1-2: one CE per attribute, equal weights), then let
DFD-Net use it frozen:

    python -m training.dfd_eife --rafdb-root RAF-DB/basic --recipe paper
    occlufer train --model dfd_net --recipe paper_rafdb ...

The EIFE must see exactly the expression branch's input (size, grey, stem), so it is built
from the DFD-Net recipe named by `--recipe` and written to `default_eife_path(recipe)`, where
the matching `<recipe>_rafdb` DFD-Net recipe looks for it. The paper's second EIFE (Multi-PIE
identity / pose / illumination) has no reader here: Multi-PIE is licensed and not available.

Stage-1 hyper-parameters are not in the paper [A]: the DFD-Net recipe's optimiser, lr and
batch size, 20 epochs, flip/affine/photometric augmentation without occluders.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from app.pipeline.preprocess import InputSpec
from models.dfd_net import RAFDB_ATTRIBUTES, AttributeEncoder, save_eife
from training.augment import augment_batch
from training.data import load_split
from training.data.rafdb_attributes import read_attributes
from training.recipes import get_recipe
from training.recipes.dfd_net import default_eife_path
from training.trainer import epoch_batches, lr_factor, make_optimizer, seed_everything


def attribute_accuracy(encoder: AttributeEncoder, x: torch.Tensor,
                       z: np.ndarray) -> dict[str, float]:
    encoder.eval()
    with torch.no_grad():
        f = torch.cat([encoder.features(x[s:s + 256]) for s in range(0, len(x), 256)])
        return {name: float((head(f).argmax(1).numpy() == z[:, j]).mean() * 100)
                for j, (name, head) in enumerate(encoder.heads.items())}


def pretrain_eife(rafdb_root: Path, recipe: str = "fast", epochs: int = 20,
                  out: Path | None = None, limit: int | None = None, seed: int = 0,
                  progress: bool = True) -> Path:
    """Train an RAF-DB attribute EIFE matching DFD-Net recipe `recipe`; returns its file
    (with `<file>.json` beside it: settings and per-attribute test accuracy)."""
    # the DFD-Net recipe's optimiser and lr, over this stage's own epochs
    rec = replace(get_recipe("dfd_net", recipe), epochs=epochs, cosine_epochs=None)
    cfg = rec.model_cfg
    spec = InputSpec(size=rec.size, color=rec.color)  # type: ignore[arg-type]
    seed_everything(seed)
    train = load_split("rafdb", rafdb_root, "train", size=rec.size, color="gray",
                       progress=progress)
    test = load_split("rafdb", rafdb_root, "test", size=rec.size, color="gray",
                      progress=progress)
    z_train = read_attributes(rafdb_root, train.names)
    z_test = read_attributes(rafdb_root, test.names)
    images = train.images
    if limit is not None:
        images, z_train = images[:limit], z_train[:limit]
    encoder = AttributeEncoder(RAFDB_ATTRIBUTES, in_chans=spec.channels,
                               width=cfg.get("eife_width") or cfg["width"],
                               small_input=cfg.get("small_input", False),
                               stem_stride=cfg.get("stem_stride", 1))
    optimizer = make_optimizer(encoder, rec)
    batch = min(rec.batch_size, len(images))
    steps = len(epoch_batches(len(images), batch, 0, seed))
    total = epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, total, int(rec.warmup_epochs * steps), rec))
    z = torch.from_numpy(z_train)
    for epoch in range(epochs):
        encoder.train()
        losses = []
        for _, indices in epoch_batches(len(images), batch, epoch, seed):
            x = torch.from_numpy(augment_batch(images, indices, epoch, seed, spec, rec.augment,
                                               False))
            loss = encoder.attribute_loss(x, z[list(indices)])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        if progress:
            print(f"EIFE epoch {epoch + 1}/{epochs}: attribute loss {np.mean(losses):.4f}",
                  file=sys.stderr)
    x_test = torch.from_numpy(augment_batch(test.images, range(len(test)), 0, seed, spec, None,
                                            False))
    accuracy = attribute_accuracy(encoder, x_test, z_test)
    out = Path(out) if out else default_eife_path(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_eife(encoder, out)
    out.with_name(out.name + ".json").write_text(json.dumps({
        "recipe": recipe, "epochs": epochs, "train_images": len(images), "seed": seed,
        "rafdb_root": str(rafdb_root), "config": encoder.config,
        "test_accuracy": accuracy}, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rafdb-root", required=True, type=Path, help="RAF-DB basic/ folder")
    parser.add_argument("--recipe", default="fast", help="DFD-Net recipe to match (fast/paper)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = pretrain_eife(args.rafdb_root, args.recipe, args.epochs, args.out, args.limit,
                         args.seed)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
