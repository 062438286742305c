"""Waypoint experts for LIBERO's articulated goals. Like the pick-and-place expert they read the scene (privileged)
and drive the gripper with the proportional OSC_POSE controller of `geometry.pose_action`.

`open(<cabinet>_<level>_region)`: the drawer body `<cabinet>_cabinet_<level>` slides on a joint that opens at
negative qpos (LIBERO: open below -0.14 m), so the pull direction is minus the joint axis in world coordinates and the
handle is the drawer's collision geom furthest along it. The handle sits under the next drawer's handle, so a
downward gripper cannot reach it: the gripper turns horizontal, points into the handle with its fingers closing
vertically, closes on the bar, pulls 20 cm, lets go and rises clear of the drawer.

`turnon(<stove>)`: the knob turns about a vertical hinge and counts as on above 0.5 rad (LIBERO's FlatStove). Its
lever is the knob body's top 2 cm of collision geometry; the closed gripper goes down beside the lever's arm that
points away from the robot and pushes it round, always perpendicular to the lever at its current angle (read from
the simulator); when the fingers slip past the lever (the knob turns back) or the push stalls, it rises straight
up, goes round and starts again behind it. Measured: 49/50 init states of libero_goal's "turn on the stove" (README).

`close(<cabinet>_<level>_region)`: the closed gripper, pointing down and leaning 40 degrees towards the push, pushes
the open drawer's handle (near its end on the robot's side) until the joint reads closed. A drawer that is already
open (or closed) makes its open (close) expert plan nothing, so a sequence skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_pl.experts.geometry import DOWN, gripper_down, pose_action, quat_to_matrix, rot_z
from rsd_pl.experts.scene import body_points, collision_geoms

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
UP = np.array([0.0, 0.0, 0.08])  # approach height above a contact point


@dataclass
class Waypoint:
    target: np.ndarray  # (3,) eef position
    gripper: float
    speed: float = 1.0  # max action norm (the controller's units)
    tol: float = 0.008  # m
    hold: int = 0       # > 0: stay where the eef is for this many steps (closing / opening the gripper)


class WaypointExpert:
    """`reset(env)` plans the waypoints from the scene; `act(obs)` drives through them, each given up after
    `phase_limit` steps (as the pick-and-place expert's phases are)."""

    phase_limit = 60

    def reset(self, env) -> None:
        """Plans the waypoints; an expert whose goal already holds (e.g. a drawer that is open) plans none and is
        done at once."""
        self.env = env
        self.waypoints, self.rotation = self.plan(env)
        self.index, self.steps, self.done = 0, 0, not self.waypoints

    def plan(self, env) -> tuple[list[Waypoint], np.ndarray]:
        """-> (waypoints, the gripper's target orientation (3, 3) throughout)."""
        raise NotImplementedError

    def act(self, obs: dict) -> np.ndarray:
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        rot = quat_to_matrix(obs["robot0_eef_quat"])
        if not self.waypoints:  # nothing to do: hold still
            return pose_action(eef, rot, eef, rot, GRIPPER_OPEN)
        point = self.waypoints[self.index]
        target = eef if point.hold else point.target
        action = pose_action(eef, rot, target, self.rotation, point.gripper, max_speed=point.speed)
        self.steps += 1
        reached = self.steps >= point.hold if point.hold else np.linalg.norm(point.target - eef) < point.tol
        if reached or self.steps >= self.phase_limit:
            if self.index == len(self.waypoints) - 1:
                self.done = True
            else:
                self.index, self.steps = self.index + 1, 0
        return action


def _rotate(v: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1]])


# pointing along -y, fingers closing vertically: DOWN turned -90 degrees about world x
HORIZONTAL = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]) @ DOWN


class DrawerExpert(WaypointExpert):
    name = "drawer"
    pull = 0.2  # m (LIBERO: open beyond 0.14)

    def __init__(self, region: str | None = None) -> None:
        self.region = region
        """The drawer's region (e.g. wooden_cabinet_1_top_region); default: the one of the goal `open(region)`."""

    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `open(<region>)` goal (libero_goal's middle drawer; a drawer region's, see `plan`; a
        microwave's `open(microwave_1)` is not)."""
        return len(goal) == 1 and len(goal[0]) == 2 and goal[0][0] == "open" and goal[0][1].endswith("_region")

    def plan(self, env) -> tuple[list[Waypoint], np.ndarray]:
        handle, pull, opening, rotation = drawer_geometry(env, self.region or env.goal[0][1])
        if opening > OPEN:  # already open (libero_10's bottom drawer starts open): nothing to do
            return [], rotation
        out = handle + self.pull * pull
        # the last waypoint lifts the hand clear of the open drawer, so a next expert does not push it shut
        return [Waypoint(handle + 0.12 * pull + [0.0, 0.0, 0.03], GRIPPER_OPEN),
                Waypoint(handle + 0.10 * pull, GRIPPER_OPEN, tol=0.01),
                Waypoint(handle, GRIPPER_OPEN, speed=0.5, tol=0.01),
                Waypoint(handle, GRIPPER_CLOSE, hold=10),
                Waypoint(out, GRIPPER_CLOSE, speed=0.5, tol=0.01),
                Waypoint(out, GRIPPER_OPEN, hold=5),
                Waypoint(out + 0.04 * pull + [0.0, 0.0, 0.15], GRIPPER_OPEN, tol=0.02)], rotation


OPEN, CLOSED = 0.14, 0.0  # m a drawer is pulled out (-qpos) beyond which LIBERO calls it open / at most closed


def drawer_geometry(env, region: str) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """A drawer's handle position (3,), its pull direction (3,, unit), how far it is open (m, -qpos) and the
    horizontal gripper rotation (3, 3) that points into the handle; ValueError when the region is not a drawer's."""
    sim = env.raw.sim
    body = drawer_body(sim, region)
    if body is None:
        raise ValueError(f"{env.task_name}: goal region {region!r} is not a drawer (no <cabinet>_cabinet_<level> body)")
    joint = drawer_joint(sim, body)
    axis = sim.data.xmat[body].reshape(3, 3) @ sim.model.jnt_axis[joint]
    pull = -axis / np.linalg.norm(axis)  # the drawer opens at negative qpos
    handle = sim.data.geom_xpos[handle_geom(sim, body, pull)].copy()
    heading = math.atan2(-pull[1], -pull[0])  # where the gripper points
    opening = -float(sim.data.qpos[sim.model.jnt_qposadr[joint]])
    return handle, pull, opening, rot_z(heading + math.pi / 2) @ HORIZONTAL


def drawer_joint(sim, body: int) -> int:
    """The slide joint of a drawer body."""
    return next(j for j in range(sim.model.njnt) if sim.model.jnt_bodyid[j] == body)


def handle_geom(sim, body: int, pull: np.ndarray) -> int:
    """The drawer's collision geom furthest along its pull direction: the handle."""
    return max(collision_geoms(sim.model, body, subtree=False), key=lambda g: float(sim.data.geom_xpos[g] @ pull))


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """(3, 3) rotation by `angle` about `axis` (Rodrigues)."""
    k = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    cross = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    return np.eye(3) + math.sin(angle) * cross + (1 - math.cos(angle)) * cross @ cross


def half_extent(sim, geom: int, direction: np.ndarray) -> float:
    """Half the length of a box geom along a world direction (unit)."""
    axes = sim.data.geom_xmat[geom].reshape(3, 3)  # columns: the box's axes in world frame
    return float(np.abs(axes.T @ direction) @ sim.model.geom_size[geom])


class CloseDrawerExpert(WaypointExpert):
    """`close(<cabinet>_<level>_region)`: the closed gripper, pointing down with its long side along the cabinet's
    face, comes down in front of the open drawer's handle and pushes the handle in past closed (the joint's stop
    ends the push), then backs off and rises. Pushing on the handle (2.6 cm proud of the drawer front) keeps the
    hand clear of the drawer above when the pushed drawer reaches the cabinet."""

    name = "close_drawer"
    beyond = 0.05      # m the push target lies past the closed position (the controller pushes harder)
    push_limit = 150   # steps the push may take (a drawer with a bowl in it slides slowly)
    inset = 0.012      # m from the handle's end where the fingers push
    tilt = math.radians(40)

    def __init__(self, region: str | None = None) -> None:
        self.region = region
        """The drawer's region (e.g. white_cabinet_1_bottom_region); default: the one of the goal `close(region)`."""

    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `close(<cabinet>_<level>_region)` goal (a drawer; libero_10's microwave has its own)."""
        return len(goal) == 1 and len(goal[0]) == 2 and goal[0][0] == "close" and goal[0][1].endswith("_region")

    def plan(self, env) -> tuple[list[Waypoint], np.ndarray]:
        handle, pull, opening, _ = drawer_geometry(env, self.region or env.goal[0][1])
        self.pushed = 0
        # fingers close along the cabinet's face; the gripper leans `tilt` towards the push so the wrist and forearm
        # trail behind the fingers, below the cabinet's top corner
        down = gripper_down(math.atan2(-pull[1], -pull[0]))
        rotation = axis_rotation(np.cross([0.0, 0.0, 1.0], pull), self.tilt) @ down
        if opening <= CLOSED:
            return [], rotation
        # push at the handle's end nearest the robot: at its middle the arm's forearm meets the cabinet's top corner
        # before the drawer is shut, and on the drawer front beside the handle (2.6 cm further in) the hand meets the
        # drawer above (libero_10 task 3, measured)
        sim = env.raw.sim
        side = np.array([-pull[1], pull[0], 0.0])  # along the cabinet's face
        base = sim.data.body_xpos[sim.model.body_name2id("robot0_base")]
        side *= np.sign((base - handle) @ side) or 1.0  # pointing towards the robot
        body = drawer_body(sim, self.region or env.goal[0][1])
        self.qpos = sim.model.jnt_qposadr[drawer_joint(sim, body)]  # read every push step
        handle = handle + max(0.0, half_extent(sim, handle_geom(sim, body, pull), side)
                              - self.inset) * side
        front = handle + 0.04 * pull
        closed = handle - opening * pull
        return [Waypoint(front + [0.0, 0.0, 0.10], GRIPPER_CLOSE, tol=0.015),
                Waypoint(front, GRIPPER_CLOSE, speed=0.5, tol=0.01),
                Waypoint(closed - self.beyond * pull, GRIPPER_CLOSE, tol=0.0),
                Waypoint(closed + 0.06 * pull + [0.0, 0.0, 0.10], GRIPPER_CLOSE, tol=0.02)], rotation

    def act(self, obs: dict) -> np.ndarray:
        """The push (waypoint 2) lasts until the drawer is closed (read from the simulator) or `push_limit` steps."""
        if self.index == 2:
            self.pushed += 1
            if -float(self.env.raw.sim.data.qpos[self.qpos]) <= CLOSED or self.pushed >= self.push_limit:
                self.index, self.steps = 3, 0
            else:
                self.steps = 0  # the waypoint's own step limit does not apply
        return super().act(obs)


class StoveExpert(WaypointExpert):
    name = "stove"

    def __init__(self, stove: str | None = None) -> None:
        self.stove = stove
        """The stove's name (e.g. flat_stove_1); default: the one of the goal `turnon(stove)`."""

    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `turnon(X)` goal (libero_goal's stove; libero_10's stove tasks add a second goal)."""
        return len(goal) == 1 and len(goal[0]) == 2 and goal[0][0] == "turnon"

    turn = 0.7        # rad turned before letting go (LIBERO: on above 0.5)
    push = 0.15       # m the target runs ahead of the lever, perpendicular to it (the controller pushes harder)
    clearance = 0.02  # m between the lever's side and the eef axis
    stall_steps = 30  # a push that turns the knob less than 0.01 rad in this many steps starts again
    depth = 0.01      # m: the eef this far below the lever top puts the fingertips at the lever

    def plan(self, env) -> tuple[list[Waypoint], float]:
        sim, stove = env.raw.sim, self.stove or env.goal[0][1]
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
        self.tangent, self.best, self.history = tangent, None, []
        self.offset = radius * arm - (half_width + self.clearance) * tangent  # eef from the hinge, at angle0
        self.centre, self.z = centre, top - self.depth
        start = self.behind(0.0)
        return [*self.approach(start, start + UP), Waypoint(start, GRIPPER_CLOSE, tol=0.0),
                Waypoint(start + UP, GRIPPER_CLOSE, speed=0.5)], gripper_down(0.0)

    @staticmethod
    def approach(start: np.ndarray, rise: np.ndarray) -> list[Waypoint]:
        """Up to `rise` (straight above the hand when starting again: going round at the lever's height dragged
        the lever back), over `start`, down to it."""
        return [Waypoint(rise, GRIPPER_CLOSE, tol=0.015), Waypoint(start + UP, GRIPPER_CLOSE),
                Waypoint(start, GRIPPER_CLOSE, speed=0.5, tol=0.005)]

    def behind(self, angle: float) -> np.ndarray:
        """The eef beside the lever arm once the knob has turned `angle` rad from where it was planned."""
        xy = self.centre + _rotate(self.offset, angle)
        return np.array([xy[0], xy[1], self.z])

    def act(self, obs: dict) -> np.ndarray:
        """Waypoints 0-2 approach; during waypoint 3 the target stays `push` m ahead of the lever, perpendicular to
        it at its current angle (read from the simulator), until it has turned `turn` rad; then the gripper rises."""
        if self.index == 3:
            angle = float(self.env.raw.sim.data.qpos[self.joint])
            turned = angle - self.angle0
            # the best angle of this push (the knob may have turned back while the hand went round)
            self.best = max(turned if self.best is None else self.best, turned)
            self.history.append(turned)
            slipped = turned < self.best - 0.05  # the fingers went past the lever: the knob turns back
            stalled = len(self.history) > self.stall_steps and turned - self.history[-self.stall_steps] < 0.01
            if slipped or stalled:  # rise, go round and start again behind the lever
                eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
                self.waypoints[:3] = self.approach(self.behind(turned), eef + UP)
                self.index, self.steps, self.best, self.history = 0, 0, None, []
                return super().act(obs)
            push = np.array([*_rotate(self.tangent, turned), 0.0])  # perpendicular to the lever as it is now
            self.waypoints[3].target = self.behind(turned) + self.push * push
            if angle >= self.turn:
                self.index, self.steps = 4, 0
            self.steps = min(self.steps, 0)  # the turn has no step limit of its own (the episode's applies)
        return super().act(obs)


def drawer_body(sim, region: str) -> int | None:
    """The body of the drawer a region like `wooden_cabinet_1_top_region` lies in, or None."""
    parts = region.rsplit("_", 2)
    name = f"{parts[0]}_cabinet_{parts[1]}" if len(parts) == 3 and parts[2] == "region" else None
    return sim.model.body_name2id(name) if name in sim.model.body_names else None


class SequenceExpert:
    """Several experts one after the other: the next starts (and reads the scene) when the current one is done."""

    def __init__(self, experts: list) -> None:
        self.experts = experts

    @property
    def name(self) -> str:
        """'drawer+pick_place': the experts' names in order."""
        return "+".join(e.name for e in self.experts)

    def reset(self, env) -> None:
        self.env, self.current = env, 0
        self.experts[0].reset(env)

    def act(self, obs: dict) -> np.ndarray:
        expert = self.experts[self.current]
        while getattr(expert, "done", False) and self.current < len(self.experts) - 1:  # done at reset: skip it
            self.current += 1
            expert = self.experts[self.current]
            expert.reset(self.env)
        return expert.act(obs)
