"""Native OpenVLA / OpenVLA-OFT in plain torch + the pinned `transformers` Llama (no remote code, no timm, no TF).

- `config.py`: the checkpoint's `config.json` -> typed sizes (honours `vision_tower_overrides`).
- `vision.py`: the two ViT towers (DINOv2 reg4 with LayerScale, SigLIP so400m) with timm's tensor names.
- `model.py`: `OpenVLA` (vision_backbone, projector, language_model) and the strict sharded loader.
- `oft.py`: OFT's L1 action head, proprio projector, sequence and post-processing (the `oft` mode).
- `preprocess.py`: OFT's LIBERO image pipeline (rotate, JPEG round trip, Lanczos-3, centre crop).
"""
