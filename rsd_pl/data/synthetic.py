"""Small, valid LIBERO-format files with smooth synthetic trajectories, for tests.

Not random noise: each demo reaches towards an object, closes the gripper, carries it to a target
and opens it, with smooth (sinusoidal-eased) end-effector deltas, like a scripted pick and place.
Images are simple renders (a coloured square for the object on a gradient) stored upside down as
LIBERO renders them. Real demonstrations come from `python -m rsd_pl collect`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rsd_pl.data.demo_writer import DemoWriter

INSTRUCTIONS = (
    "pick up the black bowl next to the plate and place it on the plate",
    "pick up the black bowl on the cookie box and place it on the plate",
)


def _segment(start: np.ndarray, goal: np.ndarray, steps: int) -> np.ndarray:
    """Eased path from start to goal: (steps, 3) positions."""
    phase = 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, steps + 1)[1:])
    return start + phase[:, None] * (goal - start)


def synthetic_demo(rng: np.random.Generator, image_size: int = 32) -> dict:
    """One pick-and-place-like demo: arrays keyed as DemoWriter.add_demo expects."""
    start = np.array([0.0, 0.0, 1.1]) + rng.uniform(-0.03, 0.03, 3)
    obj = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), 0.9])
    target = np.array([rng.uniform(-0.15, 0.15), rng.uniform(-0.15, 0.15), 0.9])
    lengths = rng.integers(12, 20, size=4)
    waypoints = [obj + [0, 0, 0.1], obj, obj + [0, 0, 0.15], target + [0, 0, 0.1]]
    path, gripper, here = [], [], start
    for i, (goal, steps) in enumerate(zip(waypoints, lengths, strict=True)):
        path.append(_segment(here, goal, int(steps)))
        gripper += [-1.0 if i < 2 else 1.0] * int(steps)
        here = goal
    hold = 6  # close at the object, open at the end
    path.append(np.repeat(here[None], hold, 0))
    gripper += [-1.0] * hold
    pos = np.concatenate(path)                                     # (N, 3)
    steps = len(pos)
    deltas = np.diff(np.concatenate([start[None], pos]), axis=0) / 0.05  # OSC scale: 1.0 = 5 cm
    rot = 0.05 * np.sin(np.linspace(0, np.pi, steps))[:, None] * rng.uniform(-1, 1, 3)
    actions = np.concatenate([np.clip(deltas, -1, 1), rot, np.array(gripper)[:, None]], axis=1).astype(np.float32)
    ee_pos = np.concatenate([start[None], pos[:-1]]).astype(np.float32)
    ee_ori = np.tile([np.pi, 0.0, 0.0], (steps, 1)).astype(np.float32) + np.cumsum(rot, 0).astype(np.float32) * 0.1
    finger = np.where(np.array(gripper) > 0, 0.01, 0.04).astype(np.float32)
    gripper_states = np.stack([finger, -finger], axis=1)
    images = _render(ee_pos, obj, image_size)
    return {
        "actions": actions,
        "states": np.concatenate([ee_pos, ee_ori], 1).astype(np.float64),
        "robot_states": np.concatenate([gripper_states, ee_pos], 1).astype(np.float64),
        "rewards": np.r_[np.zeros(steps - 1), 1.0].astype(np.uint8),
        "dones": np.r_[np.zeros(steps - 1), 1.0].astype(np.uint8),
        "obs": {
            "agentview_rgb": images,
            "eye_in_hand_rgb": images[:, ::-1].copy(),
            "gripper_states": gripper_states,
            "joint_states": np.zeros((steps, 7), np.float32),
            "ee_states": np.concatenate([ee_pos, ee_ori], 1),
            "ee_pos": ee_pos,
            "ee_ori": ee_ori,
            "object_pos": np.tile(np.r_[obj, target], (steps, 1)).astype(np.float32),
        },
    }


def _render(ee_pos: np.ndarray, obj: np.ndarray, size: int) -> np.ndarray:
    """(N, size, size, 3) uint8: a gradient, a red square at the object, a grey one at the gripper."""
    base = np.linspace(60, 160, size, dtype=np.float32)
    frame = np.stack(np.broadcast_arrays(base[:, None], base[None, :], np.full((size, size), 90.0)), -1)
    frames = np.repeat(frame[None], len(ee_pos), 0)

    def pixel(p):
        return np.clip(((p[..., :2] + 0.3) / 0.6 * (size - 4)).astype(int), 0, size - 4)

    ox, oy = pixel(obj)
    frames[:, oy:oy + 4, ox:ox + 4] = (200, 30, 30)
    for i, (gx, gy) in enumerate(pixel(ee_pos)):
        frames[i, gy:gy + 3, gx:gx + 3] = (220, 220, 220)
    return frames[:, ::-1, ::-1].astype(np.uint8)  # stored upside down, as LIBERO renders


def write_synthetic_demos(path: str | Path, num_demos: int = 8, seed: int = 0, image_size: int = 32,
                          instruction: str = INSTRUCTIONS[0]) -> Path:
    """Write `num_demos` synthetic demos into a LIBERO-format file and return its path."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    problem_info = {"problem_name": "synthetic_pick_place", "domain_name": "synthetic",
                    "language_instruction": instruction}
    with DemoWriter(path, env_name="Synthetic", problem_info=problem_info,
                    bddl_file_name="synthetic.bddl", env_args={"image_size": image_size}) as writer:
        for i in range(num_demos):
            writer.add_demo(**synthetic_demo(rng, image_size), attrs={"init_state_index": i})
    return path


def main(argv: list[str]) -> int:
    """`python -m rsd_pl synthetic`: write a small synthetic LIBERO-format file (no simulator needed)."""
    from jsonargparse import CLI

    def synthetic(out: str = "data/synthetic/synthetic_demo.hdf5", num_demos: int = 40, seed: int = 0,
                  image_size: int = 64) -> None:
        """Write smooth synthetic pick-and-place demos in the LIBERO HDF5 schema.

        Args:
            out: output file (replaced atomically if it exists).
            num_demos: number of demos to write.
            seed: random seed of the trajectories.
            image_size: side of the stored camera frames.
        """
        path = Path(out)
        partial = path.with_name(path.name + ".partial")
        partial.unlink(missing_ok=True)
        write_synthetic_demos(partial, num_demos=num_demos, seed=seed, image_size=image_size)
        partial.replace(path)
        print(f"wrote {num_demos} synthetic demos -> {path}")

    CLI(synthetic, args=argv)
    return 0
