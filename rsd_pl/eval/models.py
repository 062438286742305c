"""Loading what an evaluation decodes with, and the policies over it.

`load_models` reads the tokenizer, main and draft from the registry (lineage checked from the small json files
before any weights are read) or OpenVLA-OFT's own checkpoint for the `oft` mode, and says what they observe
(`ObsSpec`); `policy_factory` turns them into `mode -> RSDPolicy`. Everything here runs before the first
episode, so a bad name, lineage or checkpoint stops the run at once.

Imports: eval.config, the registry and the model loaders (lazily); no Lightning, no LIBERO.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from rsd_pl.errors import RsdError
from rsd_pl.eval.config import (
    DRAFT_MODES,
    OFT_CAMERA_SIZE,
    EvalConfig,
    ObsSpec,
    decoding_for,
    resolve_camera_size,
)


def _lineage_parent(artifact: Any, key: str, registry: Any) -> str:
    """The resolved spec of the artifact this one was trained on (`lineage[key]`)."""
    parent = artifact.lineage.get(key)
    if not parent:
        raise RsdError(f"{artifact.spec}: lineage.json has no {key!r} entry, so its {key} cannot be "
                       f"checked (lineage: {artifact.lineage})")
    return registry.resolve(str(parent)).spec


def load_models(cfg: EvalConfig) -> tuple[dict[str, Any], ObsSpec]:
    """The models the modes need: the RSD ones from the registry (lineage checked), OFT's from its directory.

    Returns ({"tokenizer", "normalizer", "main", "draft", "oft", "identity"}, ObsSpec); absent models are None;
    "identity" names each loaded model ({"main": "main@1 sha256:...", ...}) for the episode records.
    RsdError for an unknown name, a tokenizer other than the one main was trained on, a draft
    distilled from another main, an `oft` checkpoint missing or observing differently from main.
    """
    models: dict[str, Any] = {"tokenizer": None, "normalizer": None, "main": None, "draft": None, "oft": None,
                              "identity": {}}
    obs, main_config = None, None
    if cfg.main:
        models = load_rsd_models(cfg)
        main_config = models.pop("main_config")
        obs = obs_spec_from_config(main_config, cfg.main)
        trained = (main_config.get("data") or {}).get("camera_size")
        obs = dataclasses.replace(obs, camera_size=resolve_camera_size(cfg, trained, cfg.main))
        models["oft"] = None
    if "oft" in cfg.modes:
        # one render side per run: the main model's (oft then warns when it is not OFT's 256 px)
        models["oft"], oft_obs = load_oft_model(cfg, main_config, obs.camera_size if obs is not None else None)
        models["identity"]["oft"] = oft_identity(cfg, main_config)
        if obs is not None and obs != oft_obs:
            raise RsdError(f"modes include oft, which observes {oft_obs}, but main={cfg.main} was trained on "
                           f"{obs}: evaluate them in separate runs")
        obs = oft_obs
    return models, obs


def load_oft_model(cfg: EvalConfig, main_config: dict[str, Any] | None,
                   camera_size: int | None = None) -> tuple[Any, ObsSpec]:
    """OpenVLA-OFT's own network, head, proprio projector and statistics (the `oft` mode), and what it observes:
    agentview + wrist at 224 px through OFT's image pipeline, rendered at `camera_size` (the main model's when
    evaluated beside one), else cfg.camera_size, else 256 as OFT; a warning when that is not 256."""
    from rsd_pl.models.openvla.parts import load_oft_policy

    root = oft_root(cfg, main_config)
    if root is None:
        raise RsdError("modes include oft but no OpenVLA-OFT checkpoint is known: set oft_checkpoint to a local "
                       "OpenVLA-OFT directory (or evaluate an openvla main model, whose backbone.path is used)")
    dtype = getattr(torch, cfg.oft_dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise RsdError(f"oft_dtype={cfg.oft_dtype!r} is not a torch dtype")
    camera_size = camera_size or cfg.camera_size or OFT_CAMERA_SIZE
    if camera_size != OFT_CAMERA_SIZE:
        print(f"WARNING: camera_size={camera_size}, but OpenVLA-OFT was trained and evaluated on "
              f"{OFT_CAMERA_SIZE} px LIBERO renders: the oft baseline will not be OFT's protocol")
    model = load_oft_policy(root, dtype, cfg.oft_unnorm_key)
    print(f"eval: oft from {root} ({model.stats.key}, {cfg.oft_dtype})")
    obs = ObsSpec(cameras=("agentview", "eye_in_hand"), image_size=model.vla.spec.towers[0].image_size,
                  object_pos=False, image_pipeline="oft", camera_size=camera_size)
    return model, obs


def oft_root(cfg: EvalConfig, main_config: dict[str, Any] | None) -> str | None:
    """The OpenVLA-OFT directory of the `oft` mode: cfg.oft_checkpoint, else an openvla main's backbone.path."""
    backbone = (main_config or {}).get("model", {}).get("backbone", {})
    if cfg.oft_checkpoint is None and backbone.get("kind") == "openvla":
        return backbone.get("path")
    return cfg.oft_checkpoint


def load_rsd_models(cfg: EvalConfig) -> dict[str, Any]:
    """Tokenizer, normaliser, main and draft from the registry, with their lineage checked, and main's config."""
    from rsd_pl.models.main_model import load_main
    from rsd_pl.models.rfsq import load_tokenizer
    from rsd_pl.registry import Registry

    registry = Registry(cfg.registry)
    # 1. lineage from the small json files, before any weights are read (a 7B main takes minutes)
    main_art = registry.resolve(cfg.main)
    trained_on = _lineage_parent(main_art, "tokenizer", registry)
    tok_art = registry.resolve(cfg.tokenizer or trained_on)
    if tok_art.spec != trained_on:
        raise RsdError(f"tokenizer={cfg.tokenizer} resolves to {tok_art.spec}, but main={cfg.main} "
                       f"({main_art.spec}) was trained on {trained_on}: mismatched lineage")
    draft_art = registry.resolve(cfg.draft) if cfg.draft else None
    if draft_art is not None and _lineage_parent(draft_art, "main", registry) != main_art.spec:
        raise RsdError(f"draft={cfg.draft} ({draft_art.spec}) was distilled from "
                       f"{draft_art.lineage['main']}, not from main={cfg.main} ({main_art.spec}): "
                       "mismatched lineage")
    # 2. the weights
    tokenizer, normalizer, _ = load_tokenizer(tok_art.spec, registry)
    main, _ = load_main(main_art.spec, registry)
    draft = None
    if draft_art is not None:
        from rsd_pl.models.draft import load_draft

        draft, _ = load_draft(draft_art.spec, registry, main_spec=main_art.spec)
    draft_spec = draft_art.spec if draft_art else None
    print(f"eval: main {main_art.spec}, tokenizer {tok_art.spec}, draft {draft_spec}")
    identity = {"main": main_art.identity(), "tokenizer": tok_art.identity()}
    if draft_art is not None:
        identity["draft"] = draft_art.identity()
    return {"tokenizer": tokenizer, "normalizer": normalizer, "main": main, "draft": draft,
            "main_config": main_art.config, "identity": identity}


def oft_identity(cfg: EvalConfig, main_config: dict[str, Any] | None) -> str:
    """How the episode records name the OpenVLA-OFT checkpoint (loaded already): its folder and the names and sizes
    of its weight files (hashing 15 GB at every start would cost more than the check is worth)."""
    root = Path(str(oft_root(cfg, main_config))).resolve()
    files = sorted(p for p in root.rglob("*") if p.suffix in (".safetensors", ".pt", ".bin") and p.is_file())
    return f"{root} " + ", ".join(f"{p.relative_to(root)} {p.stat().st_size}" for p in files)


def obs_spec_from_config(config: dict[str, Any], source: str) -> ObsSpec:
    """Cameras, image side and object_pos as the main model was trained.

    From config['model']['backbone'] (image_size, num_cameras, use_object_pos). The cameras are the
    artifact's config['data']['cameras'] (HDF5 keys such as 'agentview_rgb') when it records them,
    otherwise the backbone's convention: agentview first, then the wrist camera.
    """
    from rsd_pl.envs import CAMERAS

    backbone = config.get("model", {}).get("backbone")
    if not isinstance(backbone, dict):
        raise RsdError(f"{source}: config has no model.backbone section")
    num_cameras = int(backbone.get("num_cameras", 1))
    by_key = {hdf5_key: name for name, (_, hdf5_key) in CAMERAS.items()}
    recorded = (config.get("data") or {}).get("cameras")
    cameras = tuple(by_key.get(key, key) for key in recorded) if recorded else tuple(CAMERAS)[:num_cameras]
    if len(cameras) != num_cameras or any(c not in CAMERAS for c in cameras):
        raise RsdError(f"{source}: cameras {list(cameras)} do not fit "
                       f"model.backbone.num_cameras={num_cameras} "
                       f"(LIBERO cameras: {', '.join(CAMERAS)})")
    return ObsSpec(cameras=cameras, image_size=int(backbone["image_size"]),
                   object_pos=bool(backbone.get("use_object_pos", False)),
                   image_pipeline="oft" if backbone.get("kind") == "openvla" else "resize")


def policy_factory(cfg: EvalConfig, models: dict[str, Any]) -> Any:
    """mode -> RSDPolicy over the shared weights (draft only where the mode uses it)."""
    from rsd_pl.decoding import DecodingEngine, ReferenceCheckedEngine
    from rsd_pl.eval.policy import RSDPolicy

    def make_policy(mode: str) -> RSDPolicy:
        if mode == "oft":
            from rsd_pl.decoding import OFTEngine

            return RSDPolicy(OFTEngine(models["oft"], decoding_for(cfg, mode)))
        draft = models["draft"] if mode in DRAFT_MODES else None
        engine = DecodingEngine(models["main"], models["tokenizer"], models["normalizer"],
                                decoding_for(cfg, mode), draft=draft)
        reference = cfg.deviation_reference
        if reference is not None and reference != mode:
            reference_draft = models["draft"] if reference in DRAFT_MODES else None
            engine = ReferenceCheckedEngine(engine, DecodingEngine(
                models["main"], models["tokenizer"], models["normalizer"], decoding_for(cfg, reference),
                draft=reference_draft))
        return RSDPolicy(engine)

    return make_policy

