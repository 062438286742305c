"""Which scripted expert solves a task, from its parsed BDDL goal: one expert per predicate, run one after the other
(`SequenceExpert`) when the goal has several (libero_10's "put both ... in the basket", "turn on the stove and put the
moka pot on it")."""

from __future__ import annotations

from rsd_pl.experts.articulated import CloseDrawerExpert, DrawerExpert, SequenceExpert, StoveExpert, drawer_body
from rsd_pl.experts.microwave import CloseDoorExpert, MicrowaveInsertExpert, is_microwave_region
from rsd_pl.experts.pick_place import ExpertConfig, PickPlaceExpert

SUPPORTED = ("goals made of on(X, Y) / in(X, Y) (pick and place; into a microwave by the handle), turnon(X) (a stove "
             "knob), open(X) and close(X) (a drawer region) and close(X) (a microwave's door)")


def _steps(predicate: list[str], grasp_side: int, env, share: bool = False) -> list | None:
    """The experts that achieve one predicate, in order; None when no expert handles it. share: other predicates
    of the goal put objects on the same target."""
    if PickPlaceExpert.supports([predicate]):
        if env is not None and predicate[0] == "in" and is_microwave_region(env, predicate[2]):
            return [MicrowaveInsertExpert(predicate)]
        pick_place = PickPlaceExpert(ExpertConfig(grasp_side=grasp_side), goal=predicate, share=share)
        if env is not None and predicate[0] == "in" and drawer_body(env.raw.sim, predicate[2]) is not None:
            return [DrawerExpert(predicate[2]), pick_place]  # a closed drawer is opened first
        return [pick_place]
    if StoveExpert.supports([predicate]):
        return [StoveExpert(predicate[1])]
    if DrawerExpert.supports([predicate]):
        return [DrawerExpert(predicate[1])]
    if CloseDrawerExpert.supports([predicate]):
        return [CloseDrawerExpert(predicate[1])]
    if CloseDoorExpert.supports([predicate]):
        return [CloseDoorExpert(predicate[1])]
    return None


def supports(goal: list[list[str]]) -> bool:
    return bool(goal) and all(_steps(p, 1, None) is not None for p in goal)


def expert_for(goal: list[list[str]], grasp_side: int = 1, env=None):
    """A fresh expert for the goal (grasp_side: the pick-and-place expert's rim side); ValueError naming the goal
    when no expert handles one of its predicates. With `env`, `in(X, <drawer region>)` opens the drawer first
    (libero_goal's "open the top drawer and put the bowl inside")."""
    # closing comes last whatever the BDDL order (libero_10 "put the bowl in the drawer and close it" lists it first)
    targets = [p[2] for p in goal if len(p) == 3]
    steps = [_steps(p, grasp_side, env, share=len(p) == 3 and targets.count(p[2]) > 1)
             for p in sorted(goal, key=lambda p: p[0] == "close")]
    if not goal or any(s is None for s in steps):
        raise ValueError(f"goal {goal}: no scripted expert for it (they handle {SUPPORTED})")
    experts = [expert for step in steps for expert in step]
    return experts[0] if len(experts) == 1 else SequenceExpert(experts)
