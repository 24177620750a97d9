"""FS-DSN recipes (seed 000; spec `../shared/design/seed-specs.md` section 1.5).

`paper`: the paper's FER-2013 setting on FERPlus: width 64 (49.8 M parameters), ImageNet stem
at 224 px (~10 GMAC per image; GPU only), SGD momentum 0.9 (plain, not Nesterov), lr 0.01
divided by 10 every 20 epochs, 100 epochs, batch 128 [P]; weight decay 1e-4 and no warmup or
label smoothing [A: not stated; MA-Net's values]. Loss 0.5 * CE(global) + 0.5 * CE(local)
(`FSDSN.training_loss`, [A]). The paper pre-trains on AffectNet-7 (RAF-DB for FER-2013) and
fine-tunes; neither pre-training set is available here, so this recipe trains **from
scratch**, and its numbers are not the paper's protocol. Early stopping after 25 flat epochs
(longer than one 20-epoch lr step, so a plateau before a decay does not stop it).
Augmentation: the house `AugmentConfig` (flip, +-10 deg, scale 0.9-1.1, shifts, photometric)
in place of the paper's unstated one, synthetic occluders on half the faces unless
`--no-occlusion-aug`.

`fast`: the same architecture for 2 shared CPU cores: native 48 px with the house's
small-input stem (3x3 stride 2, no max-pool), so the pre-extracted map is 12x12 (the paper's
28x28 geometry at 12/28 scale: 6x6 regions, 3x3 global and 6x6 stitched local maps, a 6x6
CAM), width 16 (all stages a quarter of the paper's: 3.2 M parameters, 0.115 GMAC), AdamW
lr 2e-3 cosine with half an epoch of warmup, wd 0.05, label smoothing 0.1, batch 64 — the
house fast settings of `resnet18`, chosen there because from-scratch SGD stalls on FERPlus
within a CPU budget. The 9x9 and 7x7 kernels stay, and they dominate the cost (layer1 alone
is 0.048 of its 0.115 GMAC). 14 epochs (the resnet18 fast baseline's schedule, so the two differ
only in architecture), early stopping after 5 flat ones.

Sizing (measured 2026-12-01 on the 2-core AMD EPYC dev machine while other jobs shared it, so
as a ratio to the house `resnet18` fast network timed in the same interleaved run, best of 4
training steps at batch 64): fs_dsn width 16 costs 1.3-1.4x resnet18-fast per training image
(1.31x with 1 thread, 1.28x with 2 threads under load, 1.39x with 2 on a nearly idle machine,
where it ran 184 img/s bare against resnet18-fast's 255); width 32 costs 3.8-4.6x, width 24
3.0x (channel counts that are not multiples of 16 run slowly on oneDNN). resnet18 fast runs 162
img/s bare and ~120 img/s through the trainer on the idle machine (its recipe), so fs_dsn fast
should run ~125 img/s bare and ~95 img/s through the trainer: ~4.4 min per FERPlus epoch
(25,045 faces), ~1 h for 14 epochs on an idle machine (width 32 would allow ~6). Measured 2026-12-02
(idle machine, 1 torch thread): 120 img/s bare against resnet18-fast's 143. On a
loaded machine torch's two threads stall on every small operator and this network, with its
many small attention operators, suffers more than plain ResNets: keep the machine to itself.
"""

from __future__ import annotations

from training.augment import AugmentConfig
from training.recipes import Recipe, cpu_recipe, fast_recipe

RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        model_cfg={"width": 64, "small_input": False},
        size=224,
        epochs=100,
        batch_size=128,
        optimizer="sgd",
        lr=0.01,
        momentum=0.9,
        nesterov=False,
        weight_decay=1e-4,
        schedule="step",
        milestones=(0.2, 0.4, 0.6, 0.8),  # every 20 of 100 epochs
        gamma=0.1,
        warmup_epochs=0.0,
        label_smoothing=0.0,
        patience=25,
        augment=AugmentConfig(),
        description="FS-DSN (width 64, 224 px, 49.8 M params) from scratch (the paper's "
                    "AffectNet/RAF-DB pre-training is unavailable), SGD 0.9 lr 0.01 /10 every "
                    "20 epochs, 100 epochs, batch 128, wd 1e-4, 0.5/0.5 two-stream CE (GPU)",
    ),
    "fast": fast_recipe(
        model_cfg={"width": 16, "small_input": True, "stem_stride": 2},
        epochs=14,
        description="FS-DSN (width 16, stride-2 small stem, 48 px, 3.2 M params) from scratch, "
                    "AdamW lr 2e-3 cosine, batch 64, wd 0.05, label smoothing 0.1, 14 epochs, "
                    "0.5/0.5 two-stream CE (2-core CPU)",
    ),
}
RECIPES["cpu"] = cpu_recipe(RECIPES["fast"])  # `fast`, long and robust: see CPU_LONG
