"""Export any occlufer expression network to ONNX with `probs` and a class activation map.

Every expression network follows the contract of `models/__init__.py` (`forward_features`
-> last map, `classifier` on its global average pool), so one wrapper serves all five:

    input  `input` (N, 3, S, S) float32, normalised as the InputSpec in the metadata says
    output `probs` (N, C) softmax of the network's logits, after the post-hoc correction
                   fitted on validation (`PostHoc`: class-prior logit adjustment, temperature,
                   optional mirror averaging), so the probabilities are calibrated in-graph
    output `cam`   (N, C, h, w) class activation maps (Zhou et al. 2016), computed in-graph:
                   cam_c = ReLU(sum_k W[c, k] * F[k]) / (max_hw ReLU(...) + 1e-6)

CAM choices: the classifier bias is left out (it is constant over space, so it cannot say
*where* the evidence is); negative evidence is clipped by the ReLU; each class map is scaled
by its own maximum so it lies in [0, 1] whatever the logit scale, and a class with no positive
evidence anywhere is all zeros (the 1e-6 keeps that division finite). The app upsamples `cam`
to the crop itself, so the graph stays at feature resolution.

Networks that take priors beside the crop or give more than probs and CAM (the contract's
optional `extra_inputs` / `extra_outputs` + `export_outputs`, see `models/__init__.py`) get
one more graph input per prior and one more output per extra map. Each extra input is also
stored as an initializer holding the network's default (batch 1, broadcast over the batch):
onnxruntime then treats it as an *optional* input (`get_inputs()` lists only `input`, the
extras appear in `get_overridable_initializers()`), so a caller that feeds only `input` -
the app's expression stage, `training.evaluate` - runs the network on its default priors, and
a caller that has real priors feeds them by name with the same batch as `input`.

The file carries its own description in `metadata_props` (classes, input spec, model name,
sha256 of the source weights, output description, and `regions` — JSON
{name: [x0, y0, x1, y1]} as fractions of the crop — for networks with a `regions` attribute,
such as FS-DSN's eye and mouth streams), is checked against torch on a real batch
before it is moved into place, and is never left half-written.

fp16: weights are *stored* as float16 and each is cast back to float32 by a `Cast` node
(compute stays float32). onnxruntime folds those casts when the session is created, so the
CPU runs it like the fp32 file at half the size, with no fp16 kernels needed and no extra
package; the cost is weight rounding only, which `ExportReport` measures.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.pipeline.preprocess import InputSpec, prepare_batch
from app.runtime.store import sha256_of as sha256_file  # the one sha256 of a file

INPUT_NAME = "input"
OUTPUT_NAMES = ("probs", "cam")
#: Largest |onnxruntime - torch| accepted on `probs` and `cam` for an fp32 export.
PARITY_TOLERANCE = 1e-4
#: The same for `cam`, relative to its largest |value| (at least 1): see `verify`.
CAM_PARITY_TOLERANCE = 1e-3
#: CAM maps whose raw peak is below this share of the face's strongest map are not compared.
CAM_EVIDENCE_FLOOR = 0.01
CAM_EPS = 1e-6
#: Float initializers smaller than this stay float32 in an fp16 file (scalars, tiny biases).
FP16_MIN_ELEMENTS = 16
VERIFY_COUNT = 64


class ExportParityError(RuntimeError):
    """onnxruntime disagrees with torch on the exported network (nothing was written)."""


@dataclass(frozen=True)
class PostHoc:
    """What the graph does to the network's logits before the softmax (fitted on validation
    by `training.calibration`): `probs = softmax((logits + logit_bias) / temperature)`, with
    the logits (and CAM) averaged over the face and its mirror image when `flip_tta` is on.
    The CAM never sees the bias or temperature: it shows where the evidence is, not how much."""

    logit_bias: tuple[float, ...] | None = None
    temperature: float = 1.0
    flip_tta: bool = False

    def to_metadata(self) -> str:
        return json.dumps({"logit_bias": list(self.logit_bias or ()),
                           "temperature": self.temperature, "flip_tta": self.flip_tta})


class ProbsAndCam(nn.Module):
    """The exported graph: one pass through the features gives both the class probabilities
    and the CAM, so the app pays for the map only with one 1x1 convolution."""

    def __init__(self, model: nn.Module, posthoc: PostHoc | None = None) -> None:
        super().__init__()
        self.posthoc = posthoc or PostHoc()
        bias = self.posthoc.logit_bias
        self.register_buffer("logit_bias", torch.tensor(bias, dtype=torch.float32)
                             if bias is not None else torch.zeros(0), persistent=False)
        if not (hasattr(model, "logits_and_cam")
                or isinstance(getattr(model, "classifier", None), nn.Linear)):
            raise TypeError(f"{type(model).__name__} has neither `logits_and_cam` nor "
                            "`classifier: nn.Linear`; every expression network must follow "
                            "the contract in models/__init__.py")
        self.model = model
        #: names of the network's optional prior inputs and extra outputs, in graph order
        self.extra_inputs = tuple(getattr(model, "extra_inputs", {}))
        self.extra_outputs = tuple(getattr(model, "extra_outputs", {}))
        if (self.extra_inputs or self.extra_outputs) and not hasattr(model, "export_outputs"):
            raise TypeError(f"{type(model).__name__} declares extra inputs/outputs but no "
                            "`export_outputs`; see models/__init__.py")

    def all_outputs(self, x: torch.Tensor, *extras: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits, raw evidence and the extra outputs; missing extras use the defaults."""
        if self.extra_inputs or self.extra_outputs:
            return self.model.export_outputs(x, **dict(zip(self.extra_inputs, extras)))
        return (*self.logits_and_evidence(x), ())

    def logits_and_evidence(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and raw per-class spatial evidence (before ReLU and scaling)."""
        if self.extra_inputs or self.extra_outputs:
            return self.all_outputs(x)[:2]
        if hasattr(self.model, "logits_and_cam"):  # multi-stream heads compute their own
            return self.model.logits_and_cam(x)
        features = self.model.forward_features(x)
        classifier: nn.Linear = self.model.classifier
        logits = classifier(features.mean(dim=(2, 3)))
        return logits, F.conv2d(features, classifier.weight[:, :, None, None])

    def corrected(self, logits: torch.Tensor) -> torch.Tensor:
        """The post-hoc step on (mirror-averaged) logits: `(logits + bias) / temperature`."""
        if self.logit_bias.numel():
            logits = logits + self.logit_bias
        if self.posthoc.temperature != 1.0:
            logits = logits / self.posthoc.temperature
        return logits

    def views(self, x: torch.Tensor, *extras: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """Logits, ReLU'd evidence (before each map is scaled by its max) and the extra maps,
        averaged with the mirror image's (maps mirrored back) when `flip_tta` is on."""
        logits, evidence, more = self.all_outputs(x, *extras)
        if self.posthoc.flip_tta:  # the mirror image; its maps are mirrored back
            logits_m, evidence_m, more_m = self.all_outputs(torch.flip(x, dims=(3,)), *extras)
            logits = (logits + logits_m) / 2
            evidence = (evidence + torch.flip(evidence_m, dims=(3,))) / 2
            more = tuple((a + torch.flip(b, dims=(b.ndim - 1,))) / 2 if b.ndim >= 3 else
                         (a + b) / 2 for a, b in zip(more, more_m))
        return logits, F.relu(evidence), more

    def forward(self, x: torch.Tensor, *extras: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, cam, more = self.views(x, *extras)
        probs = F.softmax(self.corrected(logits), dim=1)
        cam = cam / (cam.amax(dim=(2, 3), keepdim=True) + CAM_EPS)
        return (probs, cam, *more)

    def default_inputs(self) -> dict[str, np.ndarray]:
        """The network's default priors (batch 1), which the ONNX stores as initializers."""
        if not self.extra_inputs:
            return {}
        defaults = self.model.default_extra_inputs()
        return {k: defaults[k].detach().cpu().numpy() for k in self.extra_inputs}


@dataclass
class ExportReport:
    """What the verification measured; written beside the ONNX as `<file>.export.json`."""

    path: str
    fp16: bool
    size_bytes: int
    sha256: str
    batch: int
    max_abs_diff_probs: float
    max_abs_diff_cam: float
    top1_agreement: float  # fraction of images whose ONNX argmax equals torch's
    accuracy_torch: float | None  # percent, when labels were given
    accuracy_onnx: float | None
    contract_diff: float  # |classifier(gap(features)) - forward(x)| in torch


def num_classes_of(model: nn.Module) -> int:
    """Class count from the linear head, or from `num_classes` on multi-stream networks."""
    classifier = getattr(model, "classifier", None)
    if isinstance(classifier, nn.Linear):
        return classifier.out_features
    return int(model.num_classes)


def state_dict_sha256(model: nn.Module) -> str:
    """A digest of the weights themselves, for models exported straight from memory."""
    digest = hashlib.sha256()
    for key, tensor in model.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def default_verify_images(count: int = VERIFY_COUNT) -> list[np.ndarray]:
    """Real faces for the parity check: the first FERPlus test PNGs under
    $OCCLUFER_SHARED/data/ferplus (default ../shared); random data would not exercise the
    ReLUs and the softmax the way faces do."""
    shared = Path(os.environ.get("OCCLUFER_SHARED",
                                 Path(__file__).resolve().parent.parent.parent / "shared"))
    folder = shared / "data" / "ferplus" / "FER2013Test"
    files = sorted(folder.glob("*.png"))[:count]
    if not files:
        raise FileNotFoundError(f"no FERPlus test images under {folder} for the parity check; "
                                "pass verify_images or set OCCLUFER_SHARED")
    return [cv2.imread(str(f), cv2.IMREAD_GRAYSCALE) for f in files]


def store_weights_fp16(proto) -> int:
    """Rewrite float32 initializers as float16 + a Cast back to float32; returns how many.

    Tensors that would overflow float16 (|w| > 65504) and tiny ones are left in float32.
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    graph_inputs = {i.name for i in graph.input}
    kept, casts, converted = [], [], 0
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or init.name in graph_inputs:
            kept.append(init)
            continue
        array = numpy_helper.to_array(init)
        half = array.astype(np.float16)
        if array.size < FP16_MIN_ELEMENTS or not np.isfinite(half).all():
            kept.append(init)
            continue
        stored = numpy_helper.from_array(half, f"{init.name}__fp16")
        kept.append(stored)
        casts.append(helper.make_node("Cast", [stored.name], [init.name], to=TensorProto.FLOAT,
                                      name=f"{init.name}__to_fp32"))
        converted += 1
    nodes = casts + list(graph.node)
    del graph.initializer[:]
    graph.initializer.extend(kept)
    del graph.node[:]
    graph.node.extend(nodes)
    return converted


def _torch_outputs(wrapper: ProbsAndCam, x: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, float, list[np.ndarray], np.ndarray]:
    """probs, cam, the contract check, the extra maps and each CAM map's raw peak (N, C)."""
    with torch.no_grad():
        tensor = torch.from_numpy(x)
        probs, cam, *more = wrapper(tensor)
        peaks = wrapper.views(tensor)[1].amax(dim=(2, 3))
        logits = wrapper.model(tensor)
        if wrapper.posthoc.flip_tta:
            logits = (logits + wrapper.model(torch.flip(tensor, dims=(3,)))) / 2
        contract = float((F.softmax(wrapper.corrected(logits), 1) - probs).abs().max())
    return probs.numpy(), cam.numpy(), contract, [m.numpy() for m in more], peaks.numpy()


def cam_maps_with_evidence(peaks: np.ndarray) -> np.ndarray:
    """(N, C) mask of the CAM maps whose raw peak is at least CAM_EVIDENCE_FLOOR of the
    face's strongest map: the others hold (next to) no positive evidence, and scaling them
    by their own tiny max turns the last bits of fp32 rounding into visible differences."""
    return peaks >= CAM_EVIDENCE_FLOOR * peaks.max(axis=1, keepdims=True)


def verify(wrapper: ProbsAndCam, onnx_path: Path, x: np.ndarray, labels: np.ndarray | None,
           fp16: bool) -> ExportReport:
    """Compare onnxruntime with torch on batch `x` (and on its first image alone, which checks
    the dynamic batch axis); raise ExportParityError when an fp32 export is off by more
    than PARITY_TOLERANCE."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    expected_probs, expected_cam, contract, expected_more, peaks = _torch_outputs(wrapper, x)
    if contract > PARITY_TOLERANCE:
        raise ExportParityError(
            f"the network breaks the contract: the exported head (classifier on the pooled "
            f"features, or logits_and_cam) differs from softmax(forward(x)) by {contract:.3g}")
    names = list(OUTPUT_NAMES) + list(wrapper.extra_outputs)
    probs, cam, *more = session.run(names, {INPUT_NAME: x})
    single_probs, single_cam, *single_more = session.run(names, {INPUT_NAME: x[:1]})
    # the optional prior inputs fed explicitly (the defaults, one per image) must agree too
    fed = {k: np.repeat(v, len(x), axis=0) for k, v in wrapper.default_inputs().items()}
    fed_probs = session.run(["probs"], {INPUT_NAME: x, **fed})[0] if fed else probs
    for name, e, g in (("probs", expected_probs, probs), ("cam", expected_cam, cam),
                       *zip(wrapper.extra_outputs, expected_more, more)):
        if e.shape != g.shape:
            raise ExportParityError(f"ONNX {name} shape {g.shape} != torch {e.shape}")
    diff_probs = max(float(np.abs(expected_probs - probs).max()),
                     float(np.abs(expected_probs[:1] - single_probs).max()),
                     float(np.abs(expected_probs - fed_probs).max()))
    shown = cam_maps_with_evidence(peaks)[..., None, None]
    diff_cam = max(float((np.abs(expected_cam - cam) * shown).max()),
                   float((np.abs(expected_cam[:1] - single_cam) * shown[:1]).max()))
    diff_more = max([0.0] + [max(float(np.abs(e - g).max()), float(np.abs(e[:1] - s).max()))
                             for e, g, s in zip(expected_more, more, single_more)])
    # The CAM is raw, unbounded evidence, per map cell (no pooling averages its rounding out,
    # as it does for probs), and only ever drawn: min-max normalised to 8 bits, a step of
    # 1/255 of its range. Its limit is CAM_PARITY_TOLERANCE (a quarter of that step) of its
    # size: a briefly trained ORSANet on an AVX-512 CPU measured 1.3e-4 on cells of |cam| <= 1
    # (probs 9e-8), from fp32 kernels that sum in another order; probabilities and the extra
    # maps live in [0, 1] and keep PARITY_TOLERANCE. Maps without evidence of their own
    # (`cam_maps_with_evidence`) are left out: an FS-DSN map with a peak ~1e-4 of its face's
    # strongest measured 1.09e-3 on an AVX2 EPYC (probs 1.2e-7), all of it rescaled rounding.
    cam_limit = CAM_PARITY_TOLERANCE * max(1.0, float(np.abs(expected_cam).max()))
    if not fp16 and not (diff_probs < PARITY_TOLERANCE and diff_cam < cam_limit
                         and diff_more < PARITY_TOLERANCE):
        raise ExportParityError(f"ONNX differs from torch: probs by {diff_probs:.3g}, cam by "
                                f"{diff_cam:.3g} (limit {cam_limit:.3g}), extra outputs by "
                                f"{diff_more:.3g} (limit {PARITY_TOLERANCE:g})")
    agree = float(np.mean(expected_probs.argmax(1) == probs.argmax(1)))
    acc_torch = acc_onnx = None
    if labels is not None:
        acc_torch = float(np.mean(expected_probs.argmax(1) == labels) * 100.0)
        acc_onnx = float(np.mean(probs.argmax(1) == labels) * 100.0)
    return ExportReport(path=str(onnx_path), fp16=fp16, size_bytes=onnx_path.stat().st_size,
                        sha256="", batch=len(x), max_abs_diff_probs=diff_probs,
                        max_abs_diff_cam=diff_cam, top1_agreement=agree,
                        accuracy_torch=acc_torch, accuracy_onnx=acc_onnx, contract_diff=contract)


def export_classifier_report(
    model: nn.Module, spec: InputSpec, classes: Sequence[str], out: Path, fp16: bool = False,
    opset: int = 17, *, model_name: str | None = None, source_checkpoint: Path | None = None,
    verify_images: Sequence[np.ndarray] | None = None, verify_labels: np.ndarray | None = None,
    extra_metadata: dict[str, str] | None = None, posthoc: PostHoc | None = None,
) -> ExportReport:
    """`export_classifier`, returning the verification measurements as well."""
    import onnx

    out = Path(out)
    model = model.eval().cpu()
    wrapper = ProbsAndCam(model, posthoc).eval()
    num_classes = num_classes_of(model)
    if len(classes) != num_classes:
        raise ValueError(f"{len(classes)} class names for a {num_classes}-class network")
    images = list(verify_images) if verify_images is not None else default_verify_images()
    x = prepare_batch(images, spec)
    labels = None if verify_labels is None else np.asarray(verify_labels)[: len(images)]
    name = model_name or getattr(model, "model_name", type(model).__name__)
    if source_checkpoint is not None:
        source = {"source_checkpoint": Path(source_checkpoint).name,
                  "source_sha256": sha256_file(Path(source_checkpoint))}
    else:
        source = {"source_checkpoint": "in-memory", "source_sha256": state_dict_sha256(model)}
    with torch.no_grad():
        first = wrapper(torch.from_numpy(x[:1]))
    feature_shape = tuple(first[1].shape[2:])
    defaults = wrapper.default_inputs()
    extra_outputs = {name: f"{tuple(['N', *value.shape[1:]])} " + description
                     for (name, description), value
                     in zip(getattr(model, "extra_outputs", {}).items(), first[2:])}
    extra_inputs = {name: {"shape": ["N", *defaults[name].shape[1:]],
                           "dtype": str(defaults[name].dtype), "description": description}
                    for name, description in getattr(model, "extra_inputs", {}).items()}
    metadata = {
        "model_name": name,
        "classes": json.dumps(list(classes)),
        "input": json.dumps(spec.to_manifest()),
        "outputs": json.dumps({
            "probs": f"(N, {num_classes}) softmax",
            "cam": f"(N, {num_classes}, {feature_shape[0]}, {feature_shape[1]}) class activation "
                   "maps, ReLU, each scaled to [0, 1] by its own max (bias excluded)",
            **extra_outputs}),
        **({"extra_inputs": json.dumps(extra_inputs)} if extra_inputs else {}),
        "weights_dtype": "float16 (float32 compute)" if fp16 else "float32",
        "exporter": "occlufer exporters/classifier.py",
        "posthoc": wrapper.posthoc.to_metadata(),
        **source,
        **(extra_metadata or {}),
    }
    regions = getattr(model, "regions", None)  # fixed crop regions of multi-stream networks
    if regions:
        metadata["regions"] = json.dumps({str(k): [float(v) for v in box]
                                          for k, box in dict(regions).items()})

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".part", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        buffer = io.BytesIO()
        dynamic = {INPUT_NAME: {0: "batch"}, "probs": {0: "batch"}, "cam": {0: "batch"},
                   **{k: {0: "batch"} for k in wrapper.extra_outputs},
                   # a prior input is batch 1 (its default) or the batch of `input`
                   **{k: {0: f"{k}_batch"} for k in defaults}}
        example = (torch.from_numpy(x[:2]),
                   *(torch.from_numpy(np.repeat(v, 2, axis=0)) for v in defaults.values()))
        with warnings.catch_warnings():
            # torch 2.13 steers towards the dynamo exporter (needs onnxscript); the TorchScript
            # exporter handles these plain CNNs exactly and needs nothing extra.
            warnings.simplefilter("ignore")
            torch.onnx.export(wrapper, example, buffer, dynamo=False,
                              opset_version=opset, input_names=[INPUT_NAME, *defaults],
                              output_names=[*OUTPUT_NAMES, *wrapper.extra_outputs],
                              dynamic_axes=dynamic, do_constant_folding=True)
        proto = onnx.load_from_string(buffer.getvalue())
        if defaults:  # input + initializer of one name = an optional input with a default
            from onnx import numpy_helper

            proto.graph.initializer.extend(numpy_helper.from_array(v, k)
                                           for k, v in defaults.items())
        if fp16:
            store_weights_fp16(proto)
        for key, value in metadata.items():
            proto.metadata_props.add(key=key, value=str(value))
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        report = verify(wrapper, tmp, x, labels, fp16)
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    report.path, report.sha256 = str(out), sha256_file(out)
    report.size_bytes = out.stat().st_size
    sidecar = out.with_name(out.name + ".export.json")
    sidecar.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def export_classifier(model: nn.Module, spec: InputSpec, classes: Sequence[str], out: Path,
                      fp16: bool = False, opset: int = 17, **kwargs) -> Path:
    """Export `model` to `out` (input `input`, outputs `probs` and `cam`, dynamic batch) and
    verify it against torch on a real batch: fp32 must agree within PARITY_TOLERANCE on both
    outputs; for fp16 the differences and accuracy change are measured and reported in
    `<out>.export.json` instead. Keyword options: see `export_classifier_report`."""
    return Path(export_classifier_report(model, spec, classes, out, fp16, opset, **kwargs).path)


def load_checkpoint_model(checkpoint: Path) -> tuple[nn.Module, dict]:
    """A network rebuilt from a trainer checkpoint (`best.pt`/`last.pt`), in eval mode."""
    from models import create_model

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = create_model(state["model_name"], **state["model_cfg"])
    model.load_state_dict(state["model"])
    return model.eval(), state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="trainer best.pt / last.pt")
    parser.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    parser.add_argument("--fp16", action="store_true", help="store weights as float16")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    model, state = load_checkpoint_model(args.checkpoint)
    spec = InputSpec.from_manifest(state["input_spec"])
    try:
        report = export_classifier_report(model, spec, state["classes"], args.out, args.fp16,
                                          args.opset, model_name=state["model_name"],
                                          source_checkpoint=args.checkpoint)
    except ExportParityError as exc:
        print(f"error: export rejected, nothing written: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(asdict(report), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
