"""Scripted demonstrators that read privileged simulator state (object poses, the BDDL goal)."""

from rsd_pl.experts.pick_place import ExpertConfig, PickPlaceExpert
from rsd_pl.experts.rollout import ExpertEpisode, run_expert_episode

__all__ = ["ExpertConfig", "ExpertEpisode", "PickPlaceExpert", "run_expert_episode"]
