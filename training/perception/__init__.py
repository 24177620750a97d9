"""Training of the per-face perception network: occlusion map + face parsing (issue 4).

- `teacher.py`: the FaceMesh teacher on FERPlus crops, cached under ~/.cache/occlufer/perception;
- `targets.py`: parsing targets rasterised from the teacher's points, occluder stamped on top;
- `data.py`: synthetic occlusion + augmentation, seeded per (seed, epoch, image);
- `train.py`: `occlufer train-perception` (resumable, exports, evaluates, cards, registers);
- `export.py`: verified ONNX export; `evaluate.py`: occlusion IoU/F1 per kind, parsing IoU.

The runtime side is `app/pipeline/occlusion_map.py` (onnxruntime only).
"""
