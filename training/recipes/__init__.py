"""Training recipes: one file per network, each holding named `Recipe`s.

`paper` reproduces the literature's numbers for the network; `fast` is our CPU variant that
fits about two hours on a 2-core machine; `cpu` is `fast` made long and robust (`cpu_recipe`). The trainer looks a recipe up by
(network name, recipe name), so `occlufer train --model resnet18 --recipe fast` needs no code.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from training.augment import AugmentConfig
from training.degrade import DegradeConfig


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run besides data, seed and device."""

    name: str
    model_cfg: dict[str, Any]  # keyword arguments for models.create_model
    size: int  # input side in pixels (InputSpec.size)
    epochs: int
    batch_size: int
    lr: float  # peak learning rate, reached after warmup
    weight_decay: float
    momentum: float = 0.9
    nesterov: bool = True
    optimizer: str = "sgd"  # sgd | adamw
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW
    schedule: str = "cosine"  # cosine | step
    cosine_epochs: float | None = None  # cosine horizon (T_max) in epochs; None = the run
    milestones: tuple[float, ...] = (0.5, 0.75)  # step schedule: fractions of the epochs
    gamma: float = 0.1
    warmup_epochs: float = 1.0
    label_mode: str = "majority"  # FERPlus label mode for the training split
    label_smoothing: float = 0.0
    patience: int = 10  # epochs without a better FER2013Valid accuracy before stopping
    color: str = "gray"  # InputSpec colour; gray faces are replicated to 3 channels
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: per-sample training extras (training.augment.AUX_KINDS) passed to the model's
    #: `training_loss(..., aux={name: tensor})`; () = the plain (x, target) path
    aux: tuple[str, ...] = ()
    #: where a prior-guided model's "landmarks68"/"parsing" come from in training
    #: (`training.runtime_priors.TRAIN_PRIOR_SOURCES`): "teacher" = perfect priors, "runtime" =
    #: the app's perception networks on each augmented face
    train_priors: str = "teacher"
    #: after training, fit the class-prior logit adjustment and temperature on validation and
    #: fold them into the export (`training.calibration`); off = the network's own softmax
    posthoc: bool = False
    #: mirror-image test-time averaging: "off", or "auto" = on when it gains at least
    #: `FLIP_TTA_MIN_GAIN` points on validation (it doubles the expression stage's cost)
    flip_tta: str = "off"
    #: information-gap distillation (`training.distill`): shipped models that score the clean
    #: training faces; their distribution is mixed into the target with `distill_weight`
    distill_teachers: tuple[str, ...] = ()
    distill_weight: float = 0.5
    description: str = ""
    #: what stands in for the paper's unavailable data or pre-trained parts (for the card)
    substitutions: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_epochs(self, epochs: int | None) -> "Recipe":
        return self if epochs is None else replace(self, epochs=int(epochs))


#: What every network's `fast` recipe shares: sized for about two hours of FERPlus on a 2-core
#: CPU (48 px, AdamW with a short warm-up into a cosine decay, light label smoothing). One
#: place, so the networks differ only where their papers do.
CPU_FAST = dict(name="fast", size=48, batch_size=64, optimizer="adamw", lr=2e-3,
                weight_decay=0.05, schedule="cosine", warmup_epochs=0.5, label_smoothing=0.1,
                patience=5)


def fast_recipe(**fields: Any) -> Recipe:
    """A `fast` recipe: `CPU_FAST` with this network's `fields` (model_cfg, epochs, ...)."""
    return Recipe(**(CPU_FAST | {"augment": AugmentConfig()} | fields))


#: What `cpu_recipe` changes in a network's `fast` recipe. Three times the epochs (every fast
#: card's best epoch was among its last four; a 40-epoch probe of the baseline gained 5.6
#: points); the ten FERPlus votes as the target distribution ("crossentropy", the label mode
#: Barsoum et al. 2016 found best) instead of majority + smoothing, which also gives disgust
#: and contempt the signal of every face some annotators saw them in; camera degradations
#: (`training.degrade`) on 40 % of the faces; occluders from a per-epoch bank (the training
#: speed-up, `training.augment.OccluderBank`). Class imbalance is then handled after training
#: by a logit adjustment chosen on FER2013Valid (`training.calibration`), not in the loss, so
#: one run serves every trade-off between accuracy and rare-class recall.
CPU_LONG = dict(name="cpu", epochs=42, label_mode="crossentropy", label_smoothing=0.0,
                patience=12, posthoc=True, flip_tta="auto")
CPU_LONG_DEGRADE = DegradeConfig(p=0.4)
CPU_LONG_BANK = 4096


def cpu_recipe(fast: Recipe, **fields: Any) -> Recipe:
    """The long CPU recipe of a network: its `fast` recipe with `CPU_LONG` (and `fields`)."""
    augment = replace(fast.augment, occluder_bank=CPU_LONG_BANK, degrade=CPU_LONG_DEGRADE)
    description = (fast.description.replace(f"{fast.epochs} epochs", f"{CPU_LONG['epochs']} "
                                            "epochs").replace(", label smoothing 0.1", "")
                   + "; FERPlus vote distributions as targets, camera degradations on 40 % "
                     "of faces, logit adjustment + temperature fitted on FER2013Valid")
    return replace(fast, **(CPU_LONG | {"augment": augment, "description": description}
                            | fields))


def get_recipe(model_name: str, recipe: str) -> Recipe:
    """The recipe `recipe` of network `model_name` (from `training/recipes/<model_name>.py`)."""
    try:
        module = importlib.import_module(f"training.recipes.{model_name}")
    except ModuleNotFoundError as exc:
        raise KeyError(f"no recipes for model {model_name!r} (expected "
                       f"training/recipes/{model_name}.py)") from exc
    recipes: dict[str, Recipe] = module.RECIPES
    if recipe not in recipes:
        raise KeyError(f"model {model_name!r} has recipes {', '.join(recipes)}, not {recipe!r}")
    return recipes[recipe]


def recipe_names(model_name: str) -> list[str]:
    try:
        return list(importlib.import_module(f"training.recipes.{model_name}").RECIPES)
    except ModuleNotFoundError:
        return []
