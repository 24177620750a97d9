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

A shipped model needs no checkpoint (`--model mask_aware_cpu`): its ONNX is rewired so that
EFFM's `1 - occlusion` reads the map from a new graph input instead of the FOPM's output
(`gated_onnx`), and the logit adjustment in its graph is undone from its metadata. Fed the
model's own map, the rewired graph gives the shipped probabilities exactly (checked on every
batch), so the three columns again differ only in the map.
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

from app.errors import OccluferError
from app.pipeline.preprocess import InputSpec, prepare_batch
from training.cli import report_results
from training.data import load_split
from training.evaluate import _occluder_masks, occluded_root
from training.occlusion.testsets import TEST_SET_KINDS

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


GATE_INPUT = "gate_occlusion"


def gated_onnx(path: Path) -> bytes:
    """The mask-aware ONNX with EFFM's visibility (`1 - occlusion`) fed from the graph input
    `gate_occlusion` (N, h, w) instead of the model's own occlusion map."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    graph = model.graph
    gates = [n for n in graph.node if n.op_type == "Sub" and "occlusion" in n.input
             and n.input[0] != "occlusion"]
    if len(gates) != 1:
        raise OccluferError(f"{path.name}: no single `1 - occlusion` node (found {len(gates)}); "
                            "the gating probe needs the mask-aware model's export")
    gates[0].input[1] = GATE_INPUT
    graph.input.append(helper.make_tensor_value_info(GATE_INPUT, TensorProto.FLOAT,
                                                     ["batch", None, None]))
    return model.SerializeToString()


def probe_set_onnx(path: Path, images: np.ndarray, labels: np.ndarray,
                   masks: np.ndarray | None, batch: int = 256) -> dict[str, float]:
    """`probe_set` for a shipped ONNX file (see the module docstring)."""
    import onnxruntime as ort

    from training.distill import raw_posterior

    plain = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    meta = plain.get_modelmeta().custom_metadata_map
    spec = InputSpec.from_manifest(json.loads(meta["input"]))
    posthoc = json.loads(meta["posthoc"]) if meta.get("posthoc") else None
    if posthoc and posthoc.get("flip_tta"):
        raise OccluferError(f"{path.name} averages the mirror image in its graph; the probe "
                            "compares single views")
    gated = ort.InferenceSession(gated_onnx(path), providers=["CPUExecutionProvider"])
    correct = {m: 0 for m in MODES}
    for start in tqdm(range(0, len(images), batch), desc="gating probe", leave=False):
        x = prepare_batch(list(images[start:start + batch]), spec)
        truth = labels[start:start + batch]
        probs, predicted = plain.run(["probs", "occlusion"], {"input": x})
        true_mask = None if masks is None else torch.from_numpy(masks[start:start + batch])
        for mode in MODES:
            given = mode_map(mode, torch.from_numpy(predicted), true_mask)
            feed = predicted if given is None else given.numpy().astype(np.float32)
            out = gated.run(["probs"], {"input": x, GATE_INPUT: feed})[0]
            if mode == "learned" and not np.allclose(out, probs, atol=1e-6):
                raise OccluferError("the rewired graph does not reproduce the shipped model "
                                    "on its own map")
            correct[mode] += int((raw_posterior(out, posthoc).argmax(1) == truth).sum())
    return {m: round(100.0 * c / len(images), 2) for m, c in correct.items()}


def run_probe(checkpoint: Path, data_root: Path, occlusion_dir: Path | None = None,
              kinds: Sequence[str] = ("clean", *TEST_SET_KINDS), limit: int | None = None
              ) -> dict[str, dict[str, float]]:
    """`checkpoint`: a mask-aware `best.pt`, or a shipped mask-aware `.onnx` file."""
    from exporters.classifier import load_checkpoint_model

    is_onnx = Path(checkpoint).suffix.lower() == ".onnx"
    if not is_onnx:
        model, state = load_checkpoint_model(checkpoint)
        if not hasattr(model, "effm"):
            raise OccluferError(f"{checkpoint} is a {state['model_name']}: the gating probe "
                                "needs the mask-aware model (its EFFM gates by visibility)")
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
        scores = (probe_set_onnx(Path(checkpoint), images, labels, masks) if is_onnx
                  else probe_set(model, spec, images, labels, masks))
        results[kind] = scores | {"n": len(images)}
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="mask_aware best.pt")
    source.add_argument("--model", help="a shipped mask-aware model (name or .onnx file)")
    parser.add_argument("--data-root", type=Path, required=True, help="FERPlus root")
    parser.add_argument("--occlusion-dir", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N faces of each set")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    def compute():
        if args.model:
            from training.ablation import model_path

            return run_probe(model_path(args.model), args.data_root, args.occlusion_dir,
                             limit=args.limit)
        return run_probe(args.checkpoint, args.data_root, args.occlusion_dir, limit=args.limit)

    return report_results(compute, markdown_table, args.out)

if __name__ == "__main__":
    sys.exit(main())
