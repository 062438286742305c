"""Run the scripted expert for one episode and keep what a demo file stores."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ExpertEpisode:
    """One expert rollout. Arrays have one row per env step (N = steps taken)."""

    init_state_index: int
    success: bool
    steps: int
    actions: np.ndarray                        # (N, 7) float64
    states: np.ndarray | None = None           # (N, S) MuJoCo states before each action
    robot_states: np.ndarray | None = None     # (N, 9)
    obs: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (N, ...), see LiberoEnv.record
    expert: str = ""                           # the expert's name, e.g. 'pick_place', 'drawer+pick_place'
    placement: dict = field(default_factory=dict)  # a sampled placement: its seed, index, benchmark distance


def run_expert_episode(env, init_state_index: int | None, max_steps: int | None = None, record: bool = False,
                       expert=None, placement_seed: int | None = None) -> ExpertEpisode:
    """Reset `env` to an init state (a benchmark index, or with `init_state_index=None` the sampled placement of
    `placement_seed`) with the wait steps, let the expert (default: the one for the env's goal,
    `rsd_pl.experts.select.expert_for`) act until the env reports success or `max_steps` (default: the suite's)
    run out. A timeout is a failure.

    With `record`, keeps for every step the observation and state *before* the action, as upstream
    LIBERO's demo files do.
    """
    if expert is None:
        from rsd_pl.experts.select import expert_for

        expert = expert_for(env.goal, env=env)
    max_steps = env.max_steps if max_steps is None else max_steps
    obs = env.reset(init_state_index) if placement_seed is None else env.reset(None, placement_seed=placement_seed)
    expert.reset(env)
    actions, states, robot_states, records = [], [], [], []
    success = False
    for _ in range(max_steps):
        action = expert.act(obs)
        if record:
            states.append(env.sim_state())
            robot_states.append(env.robot_state(obs))
            records.append(env.record(obs))
        actions.append(action.astype(np.float64))
        obs, _, _, _ = env.step(action)
        if env.success():
            success = True
            break
    episode = ExpertEpisode(init_state_index, success, len(actions), np.stack(actions),
                            expert=getattr(expert, "name", type(expert).__name__))
    if record:
        episode.states, episode.robot_states = np.stack(states), np.stack(robot_states)
        episode.obs = {key: np.stack([r[key] for r in records]) for key in records[0]}
    return episode
