"""Experts for LIBERO's microwave (libero_10 "put the yellow and white mug in the microwave and close it").

`in(<mug>, <microwave>_heating_region)`: the interior is 14 cm tall, 21 cm wide and 17 cm deep and opens to the
front (the microwave's local -y), so a gripper pointing down cannot follow a 10 cm mug inside (its hand meets the
ceiling). The expert grasps the mug by its handle, which faces the robot in every init state, with the gripper
pointing into the microwave and tilted 60 degrees from vertical (its fingers closing across the handle's bar), lifts
the mug 2 cm above the interior's floor, carries it straight in until its handle is past the door's hinge line (so
the door can shut), sets it down and backs out. At this tilt the hand's front corner only just enters the opening;
the hand (21 cm along its fingers' closing direction) is as wide as the opening, hence the fixed lateral aim.

`close(<microwave>)`: the door turns about a vertical hinge (closed at the joint's upper limit, 0 rad; LIBERO calls
it closed above -0.005). The closed gripper, pointing down, leaning 40 degrees back from the push and with its long
side along the door, comes down beside the door's outer face at 65% of its length from the hinge and pushes it round,
always perpendicular to the door at its current angle (read from the simulator), until it is shut.
"""

from __future__ import annotations

import math

import numpy as np

from rsd_pl.experts.articulated import (
    GRIPPER_CLOSE,
    GRIPPER_OPEN,
    Waypoint,
    WaypointExpert,
    axis_rotation,
    half_extent,
)
from rsd_pl.experts.geometry import gripper_down, yaw_to_close_along
from rsd_pl.experts.scene import body_points, collision_geoms, handle_geom_of, subtree_bodies

MICROWAVE = "microwave"  # name prefix of the objects these experts handle
OPENING_OFFSET = -0.048  # m along the microwave's local x from its origin to the middle of its opening (LIBERO's model)
HINGE = 3                # mujoco mjtJoint: hinge


def is_microwave_region(env, region: str) -> bool:
    """True when `region` is a site of a microwave (e.g. microwave_1_heating_region)."""
    site = env.raw.object_sites_dict.get(region)
    return site is not None and str(site.parent_name).startswith(MICROWAVE)


class MicrowaveInsertExpert(WaypointExpert):
    name = "into_microwave"
    tilt = math.radians(60)  # from vertical towards the inside (45: the hand meets the ceiling 2 cm short)
    lift = 0.02              # m between the mug's bottom and the interior's floor while carrying
    margin = 0.012           # m the handle ends up past the door's hinge line
    phase_limit = 80

    def __init__(self, goal: list[str]) -> None:
        self.goal = goal
        """['in', <object>, <microwave>_heating_region]"""

    def plan(self, env) -> tuple[list[Waypoint], np.ndarray]:
        raw, (_, obj, region) = env.raw, self.goal
        sim = raw.sim
        microwave = raw.obj_body_id[raw.object_sites_dict[region].parent_name]
        frame = sim.data.xmat[microwave].reshape(3, 3)
        into = frame[:, 1] * [1.0, 1.0, 0.0]
        into /= np.linalg.norm(into)                # horizontal, from the opening inwards
        side = np.array([into[1], -into[0], 0.0])  # horizontal, across the opening
        body = raw.obj_body_id[obj]
        points = body_points(sim, body)
        handle = sim.data.geom_xpos[handle_geom_of(sim, body)].copy()
        centre = points.mean(axis=0)
        facing = (centre - handle) * [1.0, 1.0, 0.0]
        if facing @ into < math.cos(math.radians(30)) * np.linalg.norm(facing):
            raise ValueError(f"{env.task_name}: the handle of {obj} does not face the robot (the expert carries it "
                             "straight in by its handle)")
        # where the object's origin goes: its handle end `margin` past the door's hinge line, the opening's middle
        origin = sim.data.xpos[body].copy()
        hinge = sim.data.xanchor[door_joint(sim, microwave)]
        floor, ceiling = interior_heights(sim, microwave, region)
        bottom, top = float(points[:, 2].min()), float(points[:, 2].max())
        if top - bottom + self.lift > ceiling - floor - 0.01:
            raise ValueError(f"{env.task_name}: {obj} ({top - bottom:.3f} m tall) does not fit under the "
                             f"microwave's ceiling ({ceiling - floor:.3f} m)")
        near = float(((origin - points) @ into).max())  # from the handle's end to the origin, along `into`
        depth = float(hinge @ into) + near + self.margin
        across = float(sim.data.xpos[microwave] @ side) + OPENING_OFFSET * float(frame[:, 0] @ side)
        grip = handle - origin  # the eef (at the handle) from the object's origin, kept while carrying
        inside = depth * into + across * side + [0.0, 0.0, floor + self.lift - bottom + origin[2]] + grip
        rotation = axis_rotation(side, self.tilt) @ gripper_down(math.atan2(side[1], side[0]) + math.pi / 2)
        back = -rotation[:, 2]  # from the fingertips towards the wrist
        return [Waypoint(handle + 0.10 * back, GRIPPER_OPEN, tol=0.01),
                Waypoint(handle + 0.05 * back, GRIPPER_OPEN, tol=0.01),
                Waypoint(handle, GRIPPER_OPEN, speed=0.5, tol=0.005),
                Waypoint(handle, GRIPPER_CLOSE, hold=15),
                Waypoint(handle + [0.0, 0.0, 0.08], GRIPPER_CLOSE, speed=0.7, tol=0.01),
                Waypoint(inside - 0.2 * into, GRIPPER_CLOSE, speed=0.7, tol=0.01),
                Waypoint(inside, GRIPPER_CLOSE, speed=0.4),
                Waypoint(inside - [0.0, 0.0, 0.6 * self.lift], GRIPPER_CLOSE, speed=0.3, tol=0.006),
                Waypoint(inside, GRIPPER_OPEN, hold=10),
                Waypoint(inside - 0.22 * into, GRIPPER_OPEN, speed=0.7, tol=0.01)], rotation


def door_joint(sim, body: int) -> int:
    """The hinge joint in an object's subtree (a microwave's door); ValueError when it has none."""
    bodies = subtree_bodies(sim.model, body)
    joints = [j for j in range(sim.model.njnt)
              if int(sim.model.jnt_bodyid[j]) in bodies and int(sim.model.jnt_type[j]) == HINGE]
    if not joints:
        raise ValueError(f"{sim.model.body_id2name(body)!r} has no hinged door")
    return joints[0]


def interior_heights(sim, container: int, region: str) -> tuple[float, float]:
    """(floor, ceiling) z of a container's interior above and below the centre of its region site: the highest of
    its geometry points below the centre and the lowest above it, within the site's footprint."""
    site = sim.model.site_name2id(region) if region in sim.model.site_names else None
    if site is None:
        raise ValueError(f"no site {region!r} in the scene")
    centre, half = sim.data.site_xpos[site], sim.model.site_size[site]
    axes = sim.data.site_xmat[site].reshape(3, 3)
    points = body_points(sim, container)
    local = (points - centre) @ axes
    inside = np.all(np.abs(local[:, :2]) <= half[:2], axis=1)
    below, above = points[inside & (points[:, 2] < centre[2]), 2], points[inside & (points[:, 2] > centre[2]), 2]
    if not len(below) or not len(above):
        raise ValueError(f"{region!r}: no floor or ceiling of {sim.model.body_id2name(container)!r} over it")
    return float(below.max()), float(above.min())


class CloseDoorExpert(WaypointExpert):
    name = "close_door"
    reach = 0.65        # of the door's length from the hinge, where the fingers push
    gap = 0.012         # m between the door's outer face and the fingers' side
    push = 0.10         # m the target runs ahead of the contact point (the controller pushes harder)
    clear = 0.07        # m from the contact point, outwards, where the hand comes down (beside the door's handle)
    tilt = math.radians(40)
    closed = -0.002     # rad: pushed this far, LIBERO's -0.005 holds when the hand lets go
    push_limit = 200    # steps

    def __init__(self, target: str | None = None) -> None:
        self.target = target
        """The object with the door (e.g. microwave_1); default: the one of the goal `close(X)`."""

    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `close(X)` goal on an object (a drawer's is `close(<region>)`)."""
        return len(goal) == 1 and len(goal[0]) == 2 and goal[0][0] == "close" and not goal[0][1].endswith("_region")

    def plan(self, env) -> tuple[list[Waypoint], np.ndarray]:
        sim, name = env.raw.sim, self.target or env.goal[0][1]
        if name not in env.raw.obj_body_id:
            raise ValueError(f"{env.task_name}: close({name}): no such object in the scene")
        joint = door_joint(sim, env.raw.obj_body_id[name])
        self.qpos = sim.model.jnt_qposadr[joint]
        self.axis = sim.data.xaxis[joint] / np.linalg.norm(sim.data.xaxis[joint])
        self.hinge = sim.data.xanchor[joint].copy()
        self.q0, self.pushed = float(sim.data.qpos[self.qpos]), 0
        door = int(sim.model.jnt_bodyid[joint])
        points = body_points(sim, door) - self.hinge  # the door, from the hinge
        # along the door (horizontal): the long axis of its panel, its largest collision geom, away from the hinge
        panel = max(collision_geoms(sim.model, door), key=lambda g: float(np.prod(sim.model.geom_size[g])))
        axes, size = sim.data.geom_xmat[panel].reshape(3, 3), sim.model.geom_size[panel]
        u = axes[:, int(np.argmax(size[:2]))] * [1.0, 1.0, 0.0]
        u *= np.sign(u @ (sim.data.geom_xpos[panel] - self.hinge)) or 1.0
        self.u0 = u / np.linalg.norm(u)
        out = -np.cross(self.axis, self.u0)                 # the outer face's normal: closing moves the door to -out
        self.radius = self.reach * float((points @ self.u0).max())
        face = float((sim.data.geom_xpos[panel] - self.hinge) @ out) + half_extent(sim, panel, out)  # panel's face
        self.offset = face + self.gap                       # the eef from the hinge line, along `out`
        self.z = float(points[:, 2].min() + points[:, 2].max()) / 2 + self.hinge[2] - 0.015
        self.safe = float(points[:, 2].max()) + self.hinge[2] + 0.09  # over the door's top
        if self.q0 >= self.closed:
            return [], gripper_down(0.0)
        # targets are set every step from the door's angle (`act`): rise, over the start, down, push, back off
        speeds, tols = (1.0, 1.0, 0.6, 0.6, 0.6, 1.0), (0.012, 0.012, 0.012, 0.012, 0.0, 0.02)
        self.rise = None
        return [Waypoint(np.zeros(3), GRIPPER_CLOSE, speed=v, tol=t) for v, t in zip(speeds, tols, strict=True)], \
            gripper_down(0.0)

    def contact(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(eef position beside the door's outer face at `reach`, the face's outward normal, the gripper rotation)
        at the door's current angle."""
        angle = float(self.env.raw.sim.data.qpos[self.qpos]) - self.q0
        u = axis_rotation(self.axis, angle) @ self.u0
        out = -np.cross(self.axis, u)
        point = self.hinge + self.radius * u + self.offset * out
        point[2] = self.z
        lean = axis_rotation(np.cross([0.0, 0.0, 1.0], out), self.tilt)  # the wrist trails away from the door
        return point, out, lean @ gripper_down(yaw_to_close_along(math.atan2(u[1], u[0])))

    def act(self, obs: dict) -> np.ndarray:
        if self.waypoints and not self.done:
            point, out, self.rotation = self.contact()
            if self.rise is None:
                self.rise = np.array([*obs["robot0_eef_pos"][:2], self.safe])
            start = point + self.clear * out  # the hand comes down clear of the door's handle
            targets = [self.rise, np.array([start[0], start[1], self.safe]), start + [0.0, 0.0, 0.05], start,
                       point - self.push * out, point + 0.06 * out + [0.0, 0.0, 0.10]]
            for waypoint, target in zip(self.waypoints, targets, strict=True):
                waypoint.target = target
            if self.index == 4:  # the push lasts until the door is shut (or `push_limit` steps)
                self.pushed += 1
                shut = float(self.env.raw.sim.data.qpos[self.qpos]) >= self.closed
                if shut or self.pushed >= self.push_limit:
                    self.index, self.steps = 5, 0
                else:
                    self.steps = 0
        return super().act(obs)
