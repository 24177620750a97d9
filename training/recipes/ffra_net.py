"""FFRA-Net recipes (seed 001; spec `../shared/design/seed-specs.md` section 2.5).

`paper`: width 64 (14.3 M parameters), ImageNet stem at 224 px [A: the input size is lost in
the seed; 224 is the ResNet-18 / MA-Net size and gives the 14x14 map the 2x2 patch split
needs], ~2.1 GMAC per image (GPU), Adam lr 1e-4, batch 128, 200 epochs [P]. Adam without
weight decay is the trainer's AdamW with weight_decay 0. Only an initial lr is stated and no
decay is described [A: held constant, the `step` schedule with no milestones], no warmup, no
label smoothing; plain cross-entropy on the single head [A: the loss is not stated]. The paper
starts from an MS-Celeb-1M ResNet-18, which is not available here: this recipe trains **from
scratch** (`models.ffra_net.load_resnet_trunk` can start it from one of our FERPlus
`resnet18` checkpoints of the same width and stem instead; record it if used). Early stopping
after 30 flat epochs. Augmentation: the house `AugmentConfig` in place of the paper's
unstated one; synthetic occluders on half the faces unless `--no-occlusion-aug`.

`fast`: the same architecture on the trunk of the house `resnet18` fast network (native
48 px, 3x3 stride-2 small stem, width 32), so the two are directly comparable and the fast
FFRA-Net can be started from a resnet18-fast checkpoint: the modules act on a 128x6x6 map
(four 3x3 patches), layer4 gives a 3x3 CAM. 3.6 M parameters, 0.090 GMAC (resnet18 fast:
2.8 M, 0.078). AdamW lr 2e-3 cosine, half an epoch of warmup, wd 0.05, label smoothing 0.1,
batch 64, from scratch, 14 epochs (the resnet18 fast baseline's schedule, so the two differ only in
architecture), early stopping after 5 flat ones.

Sizing (measured 2026-12-01 on the 2-core AMD EPYC dev machine while other jobs shared it, so
as a ratio to the house `resnet18` fast network timed in the same interleaved run, best of 4
training steps at batch 64): ffra_net fast costs 1.1-1.3x resnet18-fast per training image
(1.17x with 1 thread, 1.33x with 2 threads under load, 1.14x with 2 on a nearly idle machine,
where it ran 224 img/s bare against resnet18-fast's 255). resnet18 fast runs 162 img/s bare and
~120 img/s through the trainer on the idle machine (its recipe), so ffra_net fast should run
~130 img/s bare and ~100 img/s through the trainer: ~4.2 min per FERPlus epoch (25,045 faces),
~1 h for 14 epochs on an idle machine.
Measured 2026-12-02 (idle machine, 1 torch thread, best of 4 steps at batch 64): 114 img/s
bare against resnet18-fast's 143, so two 1-thread runs side by side finish 14 epochs in
about 70 min each.
"""

from __future__ import annotations

from training.augment import AugmentConfig
from training.recipes import Recipe, cpu_recipe, fast_recipe

RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        model_cfg={"width": 64, "small_input": False},
        size=224,
        epochs=200,
        batch_size=128,
        optimizer="adamw",  # with weight_decay 0 this is the paper's Adam
        lr=1e-4,
        weight_decay=0.0,
        schedule="step",
        milestones=(),  # constant lr: no decay is described
        warmup_epochs=0.0,
        label_smoothing=0.0,
        patience=30,
        augment=AugmentConfig(),
        description="FFRA-Net (width 64, 224 px, 14.3 M params) from scratch (the paper's "
                    "MS-Celeb-1M ResNet-18 is unavailable), Adam lr 1e-4 constant, batch 128, "
                    "200 epochs, lambda 0.6 (GPU)",
    ),
    "fast": fast_recipe(
        model_cfg={"width": 32, "small_input": True, "stem_stride": 2},
        epochs=14,
        description="FFRA-Net (width 32, stride-2 small stem, 48 px, 3.6 M params) from "
                    "scratch, AdamW lr 2e-3 cosine, batch 64, wd 0.05, label smoothing 0.1, "
                    "14 epochs, lambda 0.6 (2-core CPU)",
    ),
}
RECIPES["cpu"] = cpu_recipe(RECIPES["fast"])  # `fast`, long and robust: see CPU_LONG
