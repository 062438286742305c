"""Which scripted expert solves a task, from its parsed BDDL goal."""

from __future__ import annotations

from rsd_pl.experts.articulated import DrawerExpert, SequenceExpert, StoveExpert, drawer_body
from rsd_pl.experts.pick_place import ExpertConfig, PickPlaceExpert

SUPPORTED = ("one on(X, Y) / in(X, Y) goal (pick and place), one turnon(X) goal (a stove knob) or one open(X) goal "
             "(a drawer)")


def supports(goal: list[list[str]]) -> bool:
    return any(expert.supports(goal) for expert in (PickPlaceExpert, StoveExpert, DrawerExpert))


def expert_for(goal: list[list[str]], grasp_side: int = 1, env=None):
    """A fresh expert for the goal (grasp_side: the pick-and-place expert's rim side); ValueError naming the goal
    when no expert handles it. With `env`, a goal `in(X, <drawer region>)` whose drawer is closed opens the drawer
    first (libero_goal's "open the top drawer and put the bowl inside")."""
    if PickPlaceExpert.supports(goal):
        pick_place = PickPlaceExpert(ExpertConfig(grasp_side=grasp_side))
        if env is not None and goal[0][0] == "in" and drawer_body(env.raw.sim, goal[0][2]) is not None:
            return SequenceExpert([DrawerExpert(goal[0][2]), pick_place])
        return pick_place
    if StoveExpert.supports(goal):
        return StoveExpert()
    if DrawerExpert.supports(goal):
        return DrawerExpert()
    raise ValueError(f"goal {goal}: no scripted expert for it (they handle {SUPPORTED})")
