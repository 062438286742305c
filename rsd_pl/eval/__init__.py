"""Phase 3: LIBERO evaluation. `runner` runs one episode with a policy, `loop` is the Lightning
predict loop behind `python -m rsd_pl eval`, `report` aggregates `episodes.jsonl`, `video` writes
annotated rollout mp4s. Heavy imports (LIBERO, Lightning) happen in the submodules that need them."""
