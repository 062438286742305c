"""A waypoint pick-and-place expert for LIBERO goals `on(X, Y)` / `in(X, Y)`.

It reads the object and target shapes from the simulator (privileged) and the goal from the task's
parsed BDDL, then drives the gripper through fixed phases with a proportional OSC_POSE controller:

    1 above   gripper open, yawed for the grasp, `clearance` above the grasp point
    2 descend to the grasp point
    3 close   for `close_steps` steps
    4 lift    to the carry height
    5 carry   over the target (keeping the object-in-hand offset measured after the grasp)
    6 lower   until the object's bottom is `release_gap` above the target's top
    7 release open the gripper, then rise

Objects wider than the gripper opening (bowls) are grasped by the rim, `rim_offset` along +x of the
object's centre with the fingers closing along x (the recipe of DESIGN.md section 7); others at
their centre, fingers closing across their narrowest horizontal side. `grasp_side` -1 grasps the rim
on the opposite side (-x), a second way of solving the same task (the multimodality experiment);
0 aims at the bowl's centre, the average of the two ways. Objects with a handle (`HANDLED`: the moka
pots, 14 cm long with spout and handle, too wide to close across and no rim) are grasped by the
handle: the collision geom furthest from the object's centre, fingers closing across it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from rsd_pl.experts.geometry import (
    Extent,
    extent_of,
    grasp_width,
    gripper_down,
    hand_collisions,
    local_top,
    pose_action,
    quat_to_matrix,
    yaw_to_close_along,
)
from rsd_pl.experts.scene import body_extent, body_points, handle_geom_of

GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
SUPPORTED_PREDICATES = ("on", "in")
HANDLED = ("moka_pot",)  # objects grasped by their handle (name prefixes)


@dataclass
class ExpertConfig:
    """Waypoint parameters (metres, steps)."""

    max_grip_width: float = 0.075   # wider objects are grasped by the rim
    rim_offset: float = 0.047       # rim grasp point along +x of the object's centre
    grasp_side: int = 1             # rim grasp at +x (1), at -x (-1), or the average of both: the centre (0)
    rim_depth: float = 0.025        # rim grasp below the rim's local top (bowls may sit tilted)
    grasp_depth: float = 0.03       # centre grasp below the object's top ...
    finger_reach: float = 0.012     # ... but the eef no lower than this above the object's bottom
                                    # (the fingertips reach ~1.5 cm below the eef site)
    clearance: float = 0.08         # approach height above the grasp point ...
    approach_radius: float = 0.12   # ... at least `approach_margin` above any other object this close to it
    approach_margin: float = 0.04
    spot_margin: float = 0.03       # a shared region's spot stays this far inside its edge
    carry_gap: float = 0.08         # object bottom above the target top while carrying
    lift: float = 0.15              # minimum lift above the grasp point
    release_gap: float = 0.015      # object bottom above the target top at release
    close_steps: int = 12
    release_steps: int = 8
    pos_tol: float = 0.008
    grasp_tol: float = 0.004        # tighter tolerance for reaching the grasp point
    phase_limit: int = 40           # steps before a phase gives up waiting and moves on
    slow_zone: float = 0.04         # descend / lower at full speed until this close to the goal


class PickPlaceExpert:
    """`reset(env)` once per episode (after the wait steps), then `act(obs)` every step."""

    name = "pick_place"  # recorded in each demo's `expert` attribute

    def __init__(self, config: ExpertConfig | None = None, goal: list[str] | None = None, share: bool = False) -> None:
        """goal: the predicate to achieve, e.g. ['in', 'alphabet_soup_1', 'basket_1_contain_region']
        (default: the env's single goal); one step of a SequenceExpert gets its own. share: the target region
        receives other objects of the goal too (libero_10's two moka pots on one stove), so the object goes to
        the free spot of the region (`_free_spot`) instead of its centre."""
        self.config = config or ExpertConfig()
        self.goal = goal
        self.share = share

    @staticmethod
    def supports(goal: list[list[str]]) -> bool:
        """True for a single `on(X, Y)` / `in(X, Y)` goal (libero_spatial, libero_object, part of goal)."""
        return len(goal) == 1 and len(goal[0]) == 3 and goal[0][0] in SUPPORTED_PREDICATES

    def reset(self, env) -> None:
        goal = [self.goal] if self.goal is not None else env.goal
        if not self.supports(goal):
            raise ValueError(f"{env.task_name}: goal {goal} is not a single pick-and-place goal")
        _, self.object_name, self.target_name = goal[0]
        self.env = env
        raw = env.raw
        self.object_body = raw.obj_body_id[self.object_name]
        self.target_body = self._target_body(raw, self.target_name)
        self.phase, self.phase_steps = "above", 0
        self.hold: np.ndarray | None = None  # eef - (object centre xy, object bottom z), measured after closing
        self.spot: np.ndarray | None = None  # where a shared region receives the object (`share`)
        self.grasp_z = 0.0                   # eef height at the grasp, measured when the descent ends
        start = self._object()
        self.handle = self._handle(raw) if self.object_name.startswith(HANDLED) else None
        self.rim = self.handle is None and start.minor_width > self.config.max_grip_width  # cannot close across it
        if self.config.grasp_side not in (-1, 0, 1):
            raise ValueError(f"grasp_side={self.config.grasp_side}: must be 1 (+x), -1 (-x) or 0 (centre)")
        if self.config.grasp_side != 1 and not self.rim:
            raise ValueError(f"{env.task_name}: grasp_side={self.config.grasp_side} needs a rim-grasped object "
                             f"(wider than {self.config.max_grip_width} m); {self.object_name} is grasped at its "
                             "centre")
        self.close_dir, self.shift_xy = 0.0, np.zeros(2)  # rim grasp: fingers close along x (yaw 90 deg)
        if self.handle is not None:  # fingers close across the handle: perpendicular to centre -> handle
            out = self.handle[:2] - start.center[:2]
            self.close_dir = math.atan2(out[1], out[0]) + math.pi / 2
        elif not self.rim:
            self.close_dir, self.shift_xy = self._clear_centre_grasp(raw, start)
        self.yaw = math.pi / 2 if self.rim else yaw_to_close_along(self.close_dir)
        # rim grasps (bowls) keep the plain approach: the demos of libero_spatial and of the multimodality
        # experiment were made with it, and a higher approach let the centre grasp, its failing control, succeed
        self.approach_z = self._grasp_point(start)[2] + self.config.clearance if self.rim \
            else self._approach_height(raw, start)

    def _approach_height(self, raw, obj: Extent) -> float:
        """Lowest eef height from which the hand can come over the grasp point without sweeping a neighbour off: the
        tallest other movable object within `approach_radius` of it, plus the fingertips' reach and a margin
        (libero_10's milk carton, 13 cm tall, stood in the way of the 8 cm approach to the cream cheese beside it).
        Fixtures (cabinets, stoves) do not count: they do not topple, and rising over a cabinet beside the object
        put the hand into its open drawer (libero_goal task 3)."""
        cfg, grasp = self.config, self._grasp_point(obj)
        movable = getattr(raw, "objects_dict", raw.obj_body_id)
        tops = [p[np.linalg.norm(p[:, :2] - grasp[:2], axis=1) < cfg.approach_radius, 2]
                for name, body in raw.obj_body_id.items() if name != self.object_name and name in movable
                for p in [body_points(raw.sim, body)]]
        tallest = max((float(t.max()) for t in tops if len(t)), default=-math.inf)
        return max(grasp[2] + cfg.clearance, tallest + cfg.approach_margin)

    def _handle(self, raw) -> np.ndarray:
        """(3,) world centre of the object's handle (`scene.handle_geom_of`) at reset."""
        return raw.sim.data.geom_xpos[handle_geom_of(raw.sim, self.object_body)].copy()

    def _clear_centre_grasp(self, raw, obj: Extent) -> tuple[float, np.ndarray]:
        """(closing direction, xy shift along the object's long side) that keeps the hand off neighbours.

        Tries the narrow axis first, then small rotations and shifts that still fit the gripper.
        """
        cfg = self.config
        # dense: the fingers can meet a box's face between its corners (libero_10's milk carton beside the cheese)
        others = [body_points(raw.sim, body, dense=True) for name, body in raw.obj_body_id.items()
                  if name != self.object_name]
        obstacles = np.concatenate(others) if others else np.zeros((0, 3))
        major = obj.minor_axis + math.pi / 2
        candidates = []
        for offset in np.radians([0, 10, -10, 20, -20, 30, -30]):
            if grasp_width(obj.minor_width, obj.major_width, offset) > cfg.max_grip_width:
                continue
            for shift in (0.0, 0.015, -0.015, 0.03, -0.03):
                if abs(shift) > max(obj.major_width / 2 - 0.015, 0.0):
                    continue
                shift_xy = shift * np.array([math.cos(major), math.sin(major)])
                point = self._grasp_point(obj) + [*shift_xy, 0.0]
                hits = hand_collisions(obstacles, point, obj.minor_axis + offset)
                candidates.append((hits, abs(offset) + abs(shift), float(obj.minor_axis + offset), shift_xy))
        _, _, close_dir, shift_xy = min(candidates, key=lambda c: c[:2])
        return close_dir, shift_xy

    @staticmethod
    def _target_body(raw, name: str) -> int | None:
        """The body whose top the object is placed on; None for a table region (a bare site)."""
        if name in raw.obj_body_id:
            return raw.obj_body_id[name]
        site = raw.object_sites_dict.get(name)
        if site is None:
            raise ValueError(f"target {name!r} is neither an object nor a region in the scene")
        return raw.obj_body_id.get(site.parent_name)

    # --- waypoints ---------------------------------------------------------------------------
    def _object(self) -> Extent:
        self._points = body_points(self.env.raw.sim, self.object_body)  # (P, 3) world
        return extent_of(self._points)

    def _grasp_point(self, obj: Extent) -> np.ndarray:
        cfg = self.config
        if self.rim:
            xy = obj.center[:2] + [cfg.grasp_side * cfg.rim_offset, 0.0]
            top = local_top(self._points, xy, radius=0.02)
            return np.array([*xy, (obj.top if top is None else top) - cfg.rim_depth])
        if self.handle is not None:
            return self.handle.copy()
        z = max(obj.top - cfg.grasp_depth, obj.bottom + cfg.finger_reach)
        return np.array([*(obj.center[:2] + self.shift_xy), z])

    def _place_point(self, gap: float) -> np.ndarray:
        """Eef position that puts the held object's centre over the target, its bottom `gap` above it."""
        target = self.env.entity_pos(self.target_name)  # (3,) body origin or region site
        top = target[2] if self.target_body is None else body_extent(self.env.raw.sim, self.target_body).top
        xy = target[:2] if self.spot is None else self.spot
        return np.array([xy[0], xy[1], top + gap]) + self.hold

    def _free_spot(self) -> np.ndarray | None:
        """(2,) the point of the target region (a site box, `spot_margin` inside its edge) furthest from every other
        object near it; None when the target is not a region."""
        raw, cfg = self.env.raw, self.config
        site = raw.object_sites_dict.get(self.target_name)
        if site is None:
            return None
        sid = raw.sim.model.site_name2id(site.name)
        centre = raw.sim.data.site_xpos[sid][:2]
        axes = raw.sim.data.site_xmat[sid].reshape(3, 3)[:2, :2]
        half = np.maximum(raw.sim.model.site_size[sid][:2] - cfg.spot_margin, 0.0)
        grid = np.linspace(-1.0, 1.0, 7)
        spots = np.array([centre + axes @ (half * [u, v]) for u in grid for v in grid])  # (S, 2)
        others = [body_points(raw.sim, body)[:, :2] for name, body in raw.obj_body_id.items()
                  if name != self.object_name and body != self.target_body]
        near = [p[np.linalg.norm(p - centre, axis=1) < 0.3] for p in others]
        points = np.concatenate([p for p in near if len(p)] or [np.zeros((0, 2))])
        if not len(points):
            return centre.copy()
        clearance = np.linalg.norm(spots[:, None] - points[None], axis=2).min(axis=1)  # (S,)
        # the most clearance, then the nearest the centre (within a centimetre the spots count as equally clear)
        best = max(range(len(spots)), key=lambda i: (round(clearance[i], 2), -np.linalg.norm(spots[i] - centre)))
        return spots[best]

    def _waypoint(self, eef: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(target eef position, gripper command, max speed) of the current phase."""
        cfg, obj = self.config, self._object()
        if self.phase in ("above", "descend"):
            grasp = self._grasp_point(obj)
            if self.phase == "above":
                return np.array([grasp[0], grasp[1], self.approach_z]), GRIPPER_OPEN, 1.0
            return grasp, GRIPPER_OPEN, 0.5
        if self.phase == "close":
            return eef, GRIPPER_CLOSE, 0.0
        carry = self._place_point(cfg.carry_gap)
        carry[2] = max(carry[2], self.grasp_z + cfg.lift)
        if self.phase == "lift":
            return np.array([eef[0], eef[1], carry[2]]), GRIPPER_CLOSE, 1.0
        if self.phase == "carry":
            return carry, GRIPPER_CLOSE, 1.0
        if self.phase == "lower":
            return self._place_point(cfg.release_gap), GRIPPER_CLOSE, 0.5
        if self.phase == "release":
            return eef, GRIPPER_OPEN, 0.0
        return eef + [0, 0, 0.05], GRIPPER_OPEN, 0.5  # "retreat"

    def _advance(self, eef: np.ndarray, target: np.ndarray) -> None:
        cfg = self.config
        self.phase_steps += 1
        reached = np.linalg.norm(target - eef) < (cfg.grasp_tol if self.phase == "descend" else cfg.pos_tol)
        timed_out = self.phase_steps >= cfg.phase_limit
        order = ["above", "descend", "close", "lift", "carry", "lower", "release", "retreat"]
        if self.phase == "close":
            done = self.phase_steps >= cfg.close_steps
        elif self.phase == "release":
            done = self.phase_steps >= cfg.release_steps
        elif self.phase == "retreat":
            done = False
        elif self.phase == "carry":
            done = np.linalg.norm((target - eef)[:2]) < 2 * cfg.pos_tol or timed_out
        else:
            done = reached or timed_out
        if done:
            if self.phase == "descend":
                self.grasp_z = float(eef[2])
            if self.phase == "close":
                obj = self._object()
                self.hold = eef - np.array([obj.center[0], obj.center[1], obj.bottom])
                self.spot = self._free_spot() if self.share else None
            self.phase, self.phase_steps = order[order.index(self.phase) + 1], 0

    @property
    def done(self) -> bool:
        """Released and risen for 10 steps (what a SequenceExpert waits for before its next step)."""
        return self.phase == "retreat" and self.phase_steps >= 10

    def act(self, obs: dict) -> np.ndarray:
        """The next env action (7,) in [-1, 1]."""
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        rot = quat_to_matrix(obs["robot0_eef_quat"])
        target, gripper, speed = self._waypoint(eef)
        if speed > 0 and np.linalg.norm(target - eef) > self.config.slow_zone:
            speed = 1.0  # slow moves only near the goal
        action = pose_action(eef, rot, target, gripper_down(self.yaw), gripper, max_speed=max(speed, 1e-6))
        self._advance(eef, target)
        return action
