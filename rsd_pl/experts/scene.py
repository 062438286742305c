"""Reading object shapes from the MuJoCo model of a LIBERO scene (privileged, for experts)."""

from __future__ import annotations

import numpy as np

from rsd_pl.experts.geometry import Extent, extent_of

_BOX, _MESH, _CYLINDER, _SPHERE = 6, 7, 5, 2  # mujoco mjtGeom values


def subtree_bodies(model, root: int) -> set[int]:
    """The body and all its descendants (ids)."""
    bodies = {root}
    for body in range(model.nbody):  # parents have lower ids than children in MuJoCo
        if int(model.body_parentid[body]) in bodies and body != 0:
            bodies.add(body)
    return bodies


def _local_points(model, geom: int, dense: bool = False) -> np.ndarray:
    """(P, 3) points of one geom in its own frame (mesh vertices or box/cylinder corners; with `dense`, a box's or
    cylinder's bounding box is sampled on a 5 x 5 x 5 grid, so a face between its corners is seen too)."""
    kind, size = int(model.geom_type[geom]), np.asarray(model.geom_size[geom])
    if kind == _MESH:
        mesh = int(model.geom_dataid[geom])
        start, count = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        return np.asarray(model.mesh_vert[start:start + count], dtype=np.float64)
    if kind == _BOX:
        half = size
    elif kind == _CYLINDER:
        half = np.array([size[0], size[0], size[1]])
    elif kind == _SPHERE:
        half = np.array([size[0]] * 3)
    else:
        return np.zeros((1, 3))
    steps = np.linspace(-1.0, 1.0, 5) if dense else (-1.0, 1.0)
    signs = np.array([[sx, sy, sz] for sx in steps for sy in steps for sz in steps], dtype=np.float64)
    return signs * half


def collision_geoms(model, body_id: int, subtree: bool = True, collision_only: bool = True) -> list[int]:
    """The geoms of a body (and its descendants with `subtree`) that take part in contacts (all with
    `collision_only=False`)."""
    bodies = subtree_bodies(model, body_id) if subtree else {body_id}
    return [g for g in range(model.ngeom) if int(model.geom_bodyid[g]) in bodies
            and (not collision_only or int(model.geom_contype[g]) or int(model.geom_conaffinity[g]))]


def body_points(sim, body_id: int, collision_only: bool = True, dense: bool = False) -> np.ndarray:
    """(P, 3) world points of the geoms of a body and its descendants (`dense`: see `_local_points`)."""
    model, data = sim.model, sim.data
    points = []
    for geom in collision_geoms(model, body_id, collision_only=collision_only):
        local = _local_points(model, geom, dense)
        rot = np.asarray(data.geom_xmat[geom]).reshape(3, 3)
        points.append(local @ rot.T + np.asarray(data.geom_xpos[geom]))
    if not points:
        raise ValueError(f"body {model.body_id2name(body_id)!r} has no geoms")
    return np.concatenate(points)


def body_extent(sim, body_id: int) -> Extent:
    return extent_of(body_points(sim, body_id))


def handle_geom_of(sim, body_id: int) -> int:
    """The collision geom of an object furthest (horizontally) from its centre: the handle of a moka pot or a mug."""
    centre = extent_of(body_points(sim, body_id)).center
    return max(collision_geoms(sim.model, body_id),
               key=lambda g: float(np.linalg.norm(sim.data.geom_xpos[g][:2] - centre[:2])))
