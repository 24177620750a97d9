"""ORSANet (seed 004) recipes.

`paper` (Zhai et al. 2025, Sec. 4.2): the official code's network (IR units 3/4/14 at
64/128/256 channels on a 112 px face - the code resizes its 224 px input to 112 for IR-50 -,
512-d tokens on a 7 x 7 grid, 8 MCM layers, 8 heads, MLP ratio 2; 53 M parameters, ~7.6 GMAC
without the priors' networks; the paper counts 60.2 M / 6.9 G trainable), Adam lr 1e-4
(AdamW with weight decay 0), constant lr (the paper states none; the code decays x0.98 per
epoch), batch 20, 400 epochs, L = CE + 0.1 DARE (Eq. 12). The code's 5-epoch label-smoothing
warm-up, SAM optimiser and class-balanced sampler are not in the paper and not used. GPU only.

What replaces the unavailable pre-trained parts (none of the originals can be run here, so
their own cost is not measurable; what *is* measured, in the model card and BENCHMARKS.md, is
how much the priors are worth and how much our imperfect perception costs against perfect
priors - `occlufer eval --priors template|runtime|oracle`):
- IR-50's MS-Celeb-1M weights -> the same IR units trained from scratch;
- MobileFaceNet's 512 x 7 x 7 landmark features -> 68 landmarks as heat-maps through a
  trainable encoder: in training the FaceMesh teacher's points on the clean face (cached per
  image; the template where it finds none), at run time and in `eval --priors runtime` the
  landmark student's points on the (possibly occluded) face, which was trained to give the
  teacher's clean-face points;
- SegFace's Swin-B features -> a LaPa-layout label map drawn from those landmarks with hidden
  pixels as background: in training the synthetic occluder's true mask, at run time the
  occlusion network's map. Not occlufer's parser's own labels: FERPlus has no parsing ground
  truth, and that parser was itself trained on maps rendered from the teacher's landmarks,
  so rendering from the student's points carries the same information with one network less.
The dense prior thus knows where the occluder is, the sparse prior where the face's parts
are and how the expression moved them. Fed nothing, the ONNX uses the template defaults.

`fast`: native 48 px, IR units 1/2/2 at 32/64/128 channels (6 x 6 map, kept as 36 tokens:
patch_merge 1), 128-d tokens, 2 MCM layers, 4 heads, SPADE hidden 32; ~1.7 M parameters,
~0.12 GMAC per face (1.5x ResNet-18 fast); AdamW lr 1e-3 cosine, half an epoch of warmup,
wd 0.05, label smoothing 0.1, batch 64, 12 epochs, CE + 0.1 DARE (2-core CPU).
"""

from __future__ import annotations

from dataclasses import replace

from training.augment import AugmentConfig
from training.recipes import Recipe, cpu_recipe, fast_recipe

AUX = ("landmarks68", "parsing")
SUBSTITUTIONS = ("IR-50 pre-trained on MS-Celeb-1M -> the same IR units from scratch; the frozen "
                 "MobileFaceNet-68 feature map -> 68 landmarks as heat-maps through a trainable "
                 "encoder (training: the FaceMesh teacher on the clean face; app: the landmark "
                 "student); the frozen SegFace Swin-B features -> a LaPa label map drawn from "
                 "those landmarks with hidden pixels as background (training: the occluder's "
                 "true mask; app: the occlusion network's map). The originals cannot run here, "
                 "so their own cost is not measurable; the table 'Accuracy by where the priors "
                 "come from' measures what imperfect perception costs (oracle - runtime) and "
                 "what the priors give (runtime - template).")

RECIPES: dict[str, Recipe] = {
    "paper": Recipe(
        name="paper",
        model_cfg={"img_size": 112, "units": (3, 4, 14), "channels": (64, 128, 256),
                   "patch_merge": 2, "embed_dim": 512, "depth": 8, "heads": 8,
                   "mlp_ratio": 2.0, "spade_hidden": 128, "heatmap_sigma": 1.0,
                   "lambda_ce": 1.0, "lambda_dare": 0.1},
        size=112,
        epochs=400,
        batch_size=20,
        optimizer="adamw",
        lr=1e-4,
        weight_decay=0.0,
        schedule="step",
        milestones=(),  # constant lr
        warmup_epochs=0.0,
        label_smoothing=0.0,
        patience=400,
        augment=AugmentConfig(),
        aux=AUX,
        substitutions=SUBSTITUTIONS,
        description="ORSANet (IR 3/4/14, 8 MCM layers, 512-d), 112 px, Adam lr 1e-4 constant, "
                    "batch 20, 400 epochs, CE + 0.1 DARE (GPU)",
    ),
    "fast": fast_recipe(
        model_cfg={"img_size": 48, "units": (1, 2, 2), "channels": (32, 64, 128),
                   "patch_merge": 1, "embed_dim": 128, "depth": 2, "heads": 4,
                   "mlp_ratio": 2.0, "spade_hidden": 32, "heatmap_sigma": 1.0,
                   "lambda_ce": 1.0, "lambda_dare": 0.1},
        epochs=12,
        lr=1e-3,
        aux=AUX,
        substitutions=SUBSTITUTIONS,
        description="ORSANet (IR 1/2/2 at 32-128 ch, 2 MCM layers, 128-d), 48 px, AdamW lr "
                    "1e-3 cosine, batch 64, wd 0.05, label smoothing 0.1, 12 epochs, "
                    "CE + 0.1 DARE (2-core CPU)",
    ),
}
#: `fast`, long and robust (see CPU_LONG), trained on the priors the app feeds it
#: (`training.runtime_priors`): the fast model lost 2.5 points between training priors and
#: the app's (issue 14)
RECIPES["cpu"] = cpu_recipe(RECIPES["fast"], train_priors="runtime")
RECIPES["cpu"] = replace(RECIPES["cpu"], description=RECIPES["cpu"].description
                         + "; trained on the app's priors (landmark student + occlusion "
                           "network on each augmented face)")
