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
distribution (N, C), as `training.trainer.loss_fn` accepts.

Importing this package registers the built-in networks with `models.registry`.
"""

from models import resnet  # noqa: F401  (registers resnet18)
from models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
