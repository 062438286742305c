"""Which scripted expert solves a task, from its parsed BDDL goal."""

from __future__ import annotations

from rsd_pl.experts.articulated import StoveExpert
from rsd_pl.experts.pick_place import ExpertConfig, PickPlaceExpert

SUPPORTED = "one on(X, Y) / in(X, Y) goal (pick and place) or one turnon(X) goal (a stove knob)"


def supports(goal: list[list[str]]) -> bool:
    return PickPlaceExpert.supports(goal) or StoveExpert.supports(goal)


def expert_for(goal: list[list[str]], grasp_side: int = 1):
    """A fresh expert for the goal (grasp_side: the pick-and-place expert's rim side); ValueError naming the goal
    when no expert handles it."""
    if PickPlaceExpert.supports(goal):
        return PickPlaceExpert(ExpertConfig(grasp_side=grasp_side))
    if StoveExpert.supports(goal):
        return StoveExpert()
    raise ValueError(f"goal {goal}: no scripted expert for it (they handle {SUPPORTED})")
