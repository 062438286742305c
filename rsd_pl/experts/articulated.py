"""Waypoint experts for LIBERO's articulated goals. Like the pick-and-place expert they read the scene (privileged)
and drive the gripper with the proportional OSC_POSE controller of `geometry.pose_action`.

`turnon(<stove>)`: the knob turns about a vertical hinge and counts as on above 0.5 rad (LIBERO's FlatStove). Its
lever is the knob body's top 2 cm of collision geometry; the closed gripper goes down beside the lever's arm that
points away from the robot and pushes it round, always perpendicular to the lever at its current angle (read from
the simulator); when the fingers slip past the lever (the knob turns back), it goes round and starts again behind
it. Measured: 43/50 init states of libero_goal's "turn on the stove" (README).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_pl.experts.geometry import gripper_down, pose_action, quat_to_matrix
from rsd_pl.experts.scene import body_points

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
UP = np.array([0.0, 0.0, 0.08])  # approach height above a contact point


@dataclass
class Waypoint:
    target: np.ndarray  # (3,) eef position
    gripper: float
    speed: float = 1.0  # max action norm (the controller's units)
    tol: float = 0.008  # m


class WaypointExpert:
    """`reset(env)` plans the waypoints from the scene; `act(obs)` drives through them, each given up after
    `phase_limit` steps (as the pick-and-place expert's phases are)."""

    phase_limit = 60

    def reset(self, env) -> None:
        self.env = env
        self.waypoints, self.yaw = self.plan(env)
        self.index, self.steps = 0, 0

    def plan(self, env) -> tuple[list[Waypoint], float]:
        raise NotImplementedError

    def act(self, obs: dict) -> np.ndarray:
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        rot = quat_to_matrix(obs["robot0_eef_quat"])
        point = self.waypoints[self.index]
        action = pose_action(eef, rot, point.target, gripper_down(self.yaw), point.gripper, max_speed=point.speed)
        self.steps += 1
        reached = np.linalg.norm(point.target - eef) < point.tol
        if (reached or self.steps >= self.phase_limit) and self.index < len(self.waypoints) - 1:
            self.index, self.steps = self.index + 1, 0
        return action


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


class StoveExpert(WaypointExpert):
    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `turnon(X)` goal (libero_goal's stove; libero_10's stove tasks add a second goal)."""
        return len(goal) == 1 and len(goal[0]) == 2 and goal[0][0] == "turnon"

    turn = 0.7        # rad turned before letting go (LIBERO: on above 0.5)
    push = 0.15       # m the target runs ahead of the lever, perpendicular to it (the controller pushes harder)
    clearance = 0.02  # m between the lever's side and the eef axis
    depth = 0.01      # m: the eef this far below the lever top puts the fingertips at the lever

    def plan(self, env) -> tuple[list[Waypoint], float]:
        sim, stove = env.raw.sim, env.goal[0][1]
        body = sim.model.body_name2id(f"{stove}_button")
        centre = sim.data.xpos[body][:2].copy()
        points = body_points(sim, body)
        top = float(points[:, 2].max())
        lever = points[points[:, 2] > top - 0.02][:, :2] - centre  # (P, 2) around the hinge
        # the arm pointing away from the robot's base (pushing the arm on the base's side stalls at the reach limit)
        base = sim.data.body_xpos[sim.model.body_name2id("robot0_base")][:2] - centre
        away = lever[lever @ base < 0]
        reach = np.linalg.norm(away, axis=1)
        arm = away[int(np.argmax(reach))] / reach.max()  # unit vector along that arm
        tangent = np.array([-arm[1], arm[0]])  # where the arm moves when the knob turns the positive way
        half_width = float(np.abs(lever @ tangent).max())
        radius = 0.75 * float(reach.max())

        self.joint = sim.model.jnt_qposadr[sim.model.joint_name2id(f"{stove}_button")]
        self.angle0 = float(sim.data.qpos[self.joint])  # the lever was measured at this angle
        self.tangent, self.best = tangent, 0.0
        self.offset = radius * arm - (half_width + self.clearance) * tangent  # eef from the hinge, at angle0
        self.centre, self.z = centre, top - self.depth
        start = self.behind(0.0)
        return [*self.approach(start), Waypoint(start, GRIPPER_CLOSE, tol=0.0),
                Waypoint(start + UP, GRIPPER_CLOSE, speed=0.5)], 0.0

    @staticmethod
    def approach(start: np.ndarray) -> list[Waypoint]:
        return [Waypoint(start + UP, GRIPPER_CLOSE), Waypoint(start, GRIPPER_CLOSE, speed=0.5, tol=0.005)]

    def behind(self, angle: float) -> np.ndarray:
        """The eef beside the lever arm once the knob has turned `angle` rad from where it was planned."""
        xy = self.centre + _rotate(self.offset, angle)
        return np.array([xy[0], xy[1], self.z])

    def act(self, obs: dict) -> np.ndarray:
        """Waypoints 0-1 approach; during waypoint 2 the target stays `push` m ahead of the lever, perpendicular to
        it at its current angle (read from the simulator), until it has turned `turn` rad; then the gripper rises."""
        if self.index == 2:
            angle = float(self.env.raw.sim.data.qpos[self.joint])
            turned = angle - self.angle0
            self.best = max(self.best, turned)
            if turned < self.best - 0.05:  # the fingers slipped past the lever: go round and start again behind it
                self.waypoints[:2] = self.approach(self.behind(turned))
                self.index, self.steps, self.best = 0, 0, turned
                return super().act(obs)
            push = np.array([*_rotate(self.tangent, turned), 0.0])  # perpendicular to the lever as it is now
            self.waypoints[2].target = self.behind(turned) + self.push * push
            if angle >= self.turn:
                self.index, self.steps = 3, 0
            self.steps = min(self.steps, 0)  # the turn has no step limit of its own (the episode's applies)
        return super().act(obs)
