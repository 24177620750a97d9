"""Torch networks (training and export only; the app never imports this package).

Contract for every expression network, relied on by the trainer and the CAM exporter:

- `forward(x)` takes (N, in_chans, S, S) and returns logits (N, C);
- `forward_features(x)` returns the last spatial feature map (N, K, h, w);
- `classifier` is the `nn.Linear(K, C)` applied to the global average pool of that map, so
  `forward(x) == classifier(forward_features(x).mean((2, 3)))` in eval mode and a class
  activation map is `classifier.weight @ features`.

Networks whose head is not one linear layer on one map (FS-DSN's decision-level fusion of
several streams, say) instead define `logits_and_cam(x) -> (logits (N, C), evidence
(N, C, h, w))`, with logits equal to `forward(x)` in eval mode and `evidence` the raw per-class
spatial evidence (the exporter applies ReLU and per-map scaling), plus `num_classes`.

Networks trained with more than cross-entropy on the logits (auxiliary streams, adversarial
branches) define `training_loss(x, target, label_smoothing) -> (loss, logits)`; the trainer
calls it instead of `forward` + cross-entropy. `target` is class indices (N,) or a
distribution (N, C), as `models.losses.soft_cross_entropy` accepts. Networks whose loss follows the
run's progress (DANN-style GRL weights, staged training) also define `set_progress(p)`; the
trainer calls it before every step with p = finished steps / all steps of the run, in [0, 1).

Networks whose loss needs per-sample targets besides the label (occlusion masks, landmarks)
name them in their recipe's `aux` (`training.augment.AUX_KINDS`); the trainer then calls
`training_loss(x, target, label_smoothing, aux={name: tensor})`.

Networks that take priors beside the crop or export more than `probs` and `cam` declare
`extra_inputs` / `extra_outputs` ({name: description}) and define
`export_outputs(x, **extra_inputs) -> (logits, evidence, tuple of extra outputs)`; for
`extra_inputs` also `default_extra_inputs() -> {name: tensor with batch 1}`, which `forward`
uses when a prior is not given and the ONNX stores as that input's default.

Networks that cut the face on a fixed grid (FS-DSN's eye and mouth streams) expose
`regions` ({name: (x0, y0, x1, y1)} as fractions of the input crop); the exporter writes it
into the ONNX metadata as `regions` (JSON) so the app can draw the boxes.

Importing this package registers the built-in networks with `models.registry`.
"""

from models import resnet  # noqa: F401  (registers resnet18)
from models import dfd_net  # noqa: F401  (registers dfd_net)
from models import ffra_net, fs_dsn  # noqa: F401  (register ffra_net, fs_dsn)
from models import mask_aware, orsanet  # noqa: F401  (register mask_aware, orsanet)
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
