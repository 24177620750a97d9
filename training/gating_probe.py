"""Is visibility gating worth anything? The mask-aware model scored three ways on each
occluded test set: `python -m training.gating_probe --checkpoint runs/RUN/best.pt`.

Why a probe and not a second training run: the mask-aware model (003) weights its EFFM region
features by the visibility its own occlusion map predicts. Whether that gating helps the
classifier is a question about *that* map at test time, so the same trained weights are run
with the map as predicted ("learned"), with the gating switched off (every cell visible,
"off": EFFM pools each quadrant plainly) and with the occluder's true mask ("oracle": what a
perfect occlusion map would give). learned > off means the gating pays; oracle - learned is
what a better occlusion map could still add. Scores are the network's own argmax (no mirror
averaging, no logit adjustment), so the three columns differ only in the map.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from app.errors import DatasetError, OccluferError
from app.occlusion import KINDS as OCCLUDER_KINDS
from app.pipeline.preprocess import InputSpec, prepare_batch
from training.data import load_split
from training.evaluate import _occluder_masks, occluded_root

MODES = ("learned", "off", "oracle")


def mode_map(mode: str, predicted: torch.Tensor, true_mask: torch.Tensor | None
             ) -> torch.Tensor | None:
    """The occlusion map EFFM gets under `mode` (None: the model's own)."""
    if mode == "learned":
        return None
    if mode == "off":
        return torch.zeros_like(predicted)
    if true_mask is None:  # clean faces: nothing is hidden
        return torch.zeros_like(predicted)
    return F.adaptive_avg_pool2d(true_mask[:, None], predicted.shape[-2:])[:, 0]


def probe_set(model: torch.nn.Module, spec: InputSpec, images: np.ndarray,
              labels: np.ndarray, masks: np.ndarray | None, batch: int = 256
              ) -> dict[str, float]:
    """Accuracy (%) of `model` on one set under every mode of MODES."""
    correct = {m: 0 for m in MODES}
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch), desc="gating probe", leave=False):
            x = torch.from_numpy(prepare_batch(list(images[start:start + batch]), spec))
            truth = labels[start:start + batch]
            true_mask = None if masks is None else torch.from_numpy(masks[start:start + batch])
            predicted = model.parse(x)["occlusion"]
            for mode in MODES:
                parts = model.parse(x, occlusion=mode_map(mode, predicted, true_mask))
                logits = model.classifier(parts["features"].mean(dim=(2, 3)))
                correct[mode] += int((logits.argmax(1).numpy() == truth).sum())
    return {m: round(100.0 * c / len(images), 2) for m, c in correct.items()}


def run_probe(checkpoint: Path, data_root: Path, occlusion_dir: Path | None = None,
              kinds: Sequence[str] = ("clean", *OCCLUDER_KINDS), limit: int | None = None
              ) -> dict[str, dict[str, float]]:
    from exporters.classifier import load_checkpoint_model

    model, state = load_checkpoint_model(checkpoint)
    if not hasattr(model, "effm"):
        raise OccluferError(f"{checkpoint} is a {state['model_name']}: the gating probe needs "
                            "the mask-aware model (its EFFM gates by visibility)")
    spec = InputSpec.from_manifest(state["input_spec"])
    results: dict[str, dict[str, float]] = {}
    for kind in kinds:
        root = data_root if kind == "clean" else occluded_root(data_root, kind, "test",
                                                              occlusion_dir, build=False)
        data = load_split("ferplus", root, "test", "majority")
        images, labels, names = data.images, data.labels, list(data.names)
        if limit is not None:
            images, labels, names = images[:limit], labels[:limit], names[:limit]
        masks = None if kind == "clean" else _occluder_masks(root, names)
        results[kind] = probe_set(model, spec, images, labels, masks) | {"n": len(images)}
        tqdm.write(f"{kind}: " + ", ".join(f"{m} {results[kind][m]:.2f}" for m in MODES))
    return results


def markdown_table(results: dict[str, dict[str, float]]) -> str:
    lines = ["| test set | learned map | gating off | true mask (oracle) | learned - off |",
             "|---|---|---|---|---|"]
    for kind, row in results.items():
        lines.append(f"| {kind} | {row['learned']:.2f} | {row['off']:.2f} | "
                     f"{row['oracle']:.2f} | {row['learned'] - row['off']:+.2f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="mask_aware best.pt")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--occlusion-dir", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N faces of each set")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        results = run_probe(args.checkpoint, args.data_root, args.occlusion_dir,
                            limit=args.limit)
    except (DatasetError, OccluferError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(markdown_table(results))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
