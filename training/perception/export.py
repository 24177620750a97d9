"""Export the occlusion + parsing network to ONNX, verified against torch before it lands.

    input  `input`     (N, 1, S, S) float32, gray (x - 127.5) / 127.5
    output `occlusion` (N, 1, S, S) sigmoid: P(pixel occluded)
    output `parsing`   (N, C, S, S) softmax over the parsing classes

The file carries its description in `metadata_props` (classes, input spec, outputs, source
weights' sha256). It is written to a temporary name, checked on real faces (a batch and a
single image, which also checks the dynamic batch axis) to agree with torch within
PARITY_TOLERANCE on both outputs, and only then renamed into place; on a failed check
nothing is written. The measurements go to `<file>.export.json`.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from app.pipeline.preprocess import InputSpec, prepare_batch
from exporters.classifier import ExportParityError, sha256_file, state_dict_sha256
from models.perception import PerceptionExport, PerceptionUNet

INPUT_NAME = "input"
OUTPUT_NAMES = ("occlusion", "parsing")
PARITY_TOLERANCE = 1e-4


@dataclass
class PerceptionExportReport:
    path: str
    sha256: str
    size_bytes: int
    batch: int
    max_abs_diff_occlusion: float
    max_abs_diff_parsing: float
    label_agreement: float  # share of pixels whose ONNX argmax equals torch's


def export_perception(model: PerceptionUNet, spec: InputSpec, classes: Sequence[str], out: Path,
                      verify_images: Sequence[np.ndarray], opset: int = 17,
                      extra_metadata: dict[str, str] | None = None) -> PerceptionExportReport:
    """Write `model` to `out` as ONNX and verify it (raises ExportParityError, writing nothing,
    when onnxruntime and torch differ by PARITY_TOLERANCE or more)."""
    import onnx
    import onnxruntime as ort

    out = Path(out)
    wrapper = PerceptionExport(model.eval().cpu()).eval()
    x = prepare_batch(list(verify_images), spec)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(torch.from_numpy(x))]
    metadata = {
        "model_name": "perception_unet",
        "classes": json.dumps(list(classes)),
        "input": json.dumps(spec.to_manifest()),
        "outputs": json.dumps({
            "occlusion": f"(N, 1, {spec.size}, {spec.size}) sigmoid, P(pixel occluded)",
            "parsing": f"(N, {len(classes)}, {spec.size}, {spec.size}) softmax over classes"}),
        "model_cfg": json.dumps({"in_chans": model.in_chans, "num_classes": model.num_classes,
                                 "widths": list(model.widths)}),
        "exporter": "occlufer training/perception/export.py",
        "source_sha256": state_dict_sha256(model),
        **(extra_metadata or {}),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        buffer = io.BytesIO()
        dynamic = {INPUT_NAME: {0: "batch"}, "occlusion": {0: "batch"}, "parsing": {0: "batch"}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is exact for plain CNNs
            torch.onnx.export(wrapper, (torch.from_numpy(x[:2]),), buffer, dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME],
                              output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                              do_constant_folding=True)
        proto = onnx.load_from_string(buffer.getvalue())
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        got = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
        single = session.run(list(OUTPUT_NAMES), {INPUT_NAME: x[:1]})
        diffs = []
        for e, g, s1 in zip(expected, got, single):
            if e.shape != g.shape:
                raise ExportParityError(f"ONNX output shape {g.shape} != torch {e.shape}")
            diffs.append(max(float(np.abs(e - g).max()), float(np.abs(e[:1] - s1).max())))
        if not all(d < PARITY_TOLERANCE for d in diffs):
            raise ExportParityError(f"ONNX differs from torch: occlusion by {diffs[0]:.3g}, "
                                    f"parsing by {diffs[1]:.3g} (limit {PARITY_TOLERANCE:g})")
        agreement = float(np.mean(expected[1].argmax(1) == got[1].argmax(1)))
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report = PerceptionExportReport(path=str(out), sha256=sha256_file(out),
                                    size_bytes=out.stat().st_size, batch=len(x),
                                    max_abs_diff_occlusion=diffs[0], max_abs_diff_parsing=diffs[1],
                                    label_agreement=agreement)
    out.with_name(out.name + ".export.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


__all__ = ["export_perception", "PerceptionExportReport", "PARITY_TOLERANCE", "OUTPUT_NAMES"]
