"""Action normalisation with the q01/q99 bounds of the training data (OpenVLA-OFT's `BOUNDS_Q99`).

Dims with `mask == True` (xyz and axis-angle deltas) map `[q01, q99] -> [-1, 1]` and are clipped
there; the gripper (dim 6, -1 open / +1 close in LIBERO) is left as it is. A dim whose q01 equals
its q99 (a constant action in the data) normalises to 0 and un-normalises to that constant.

The statistics travel with the tokenizer (`to_dict()` is json-able) so that evaluation
un-normalises with exactly the numbers training normalised with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from rsd_pl.errors import RsdError

STAT_KEYS = ("q01", "q99", "mean", "std", "min", "max")
DEGENERATE_EPS = 1e-8  # q99 - q01 below this counts as a constant dim


def default_mask(action_dim: int) -> list[bool]:
    """All dims normalised except the last one (the gripper)."""
    return [True] * (action_dim - 1) + [False]


def check_actions(actions: np.ndarray, action_dim: int, source: str = "actions") -> None:
    """Raise `RsdError` naming `source` when `actions` is not a finite `(N, action_dim)` array."""
    if actions.ndim != 2 or actions.shape[1] != action_dim:
        raise RsdError(f"{source}: expected actions of shape (N, {action_dim}), got {tuple(actions.shape)}")
    if actions.shape[0] == 0:
        raise RsdError(f"{source}: no actions (0 rows)")
    finite = np.isfinite(actions)
    if not finite.all():
        row, dim = np.argwhere(~finite)[0]
        raise RsdError(f"{source}: non-finite action {actions[row, dim]} at row {row}, dim {dim}")


def as_float_array(x: np.ndarray) -> np.ndarray:
    """`x` as a numpy array, cast to float64 only when it is not floating already."""
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


@dataclass
class ActionNormalizer:
    """Per-dim statistics of the training actions and the q01/q99 normalisation built on them."""

    q01: np.ndarray  # (D,)
    q99: np.ndarray  # (D,)
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,)
    min: np.ndarray  # (D,)
    max: np.ndarray  # (D,)
    mask: np.ndarray = field(default=None)  # (D,) bool, True = normalised; default: all but the gripper

    def __post_init__(self) -> None:
        for key in STAT_KEYS:
            setattr(self, key, np.asarray(getattr(self, key), dtype=np.float64))
        dim = self.q01.shape[0]
        if self.mask is None:
            self.mask = np.array(default_mask(dim))
        self.mask = np.asarray(self.mask, dtype=bool)
        for key in (*STAT_KEYS, "mask"):
            value = getattr(self, key)
            if value.shape != (dim,):
                raise RsdError(f"normalizer stats: {key!r} has shape {value.shape}, expected ({dim},)")
            if key != "mask" and not np.isfinite(value).all():
                raise RsdError(f"normalizer stats: {key!r} is not finite: {value.tolist()}")
        if (self.q99 < self.q01).any():
            raise RsdError(f"normalizer stats: q99 < q01 in dims {np.nonzero(self.q99 < self.q01)[0].tolist()}")

    @property
    def action_dim(self) -> int:
        return int(self.q01.shape[0])

    @classmethod
    def fit(
        cls,
        actions: np.ndarray,
        action_dim: int = 7,
        mask: list[bool] | None = None,
        source: str = "actions",
    ) -> ActionNormalizer:
        """Statistics of `actions (N, D)`; `source` names the data in error messages."""
        actions = np.asarray(actions, dtype=np.float64)
        check_actions(actions, action_dim, source)
        return cls(
            q01=np.quantile(actions, 0.01, axis=0),
            q99=np.quantile(actions, 0.99, axis=0),
            mean=actions.mean(axis=0),
            std=actions.std(axis=0),
            min=actions.min(axis=0),
            max=actions.max(axis=0),
            mask=np.array(mask if mask is not None else default_mask(action_dim)),
        )

    # ---- the map and its inverse -------------------------------------------------------------

    def _affine(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """center, half-range (1 where degenerate), degenerate flags; all (D,)."""
        center = (self.q99 + self.q01) / 2
        half = (self.q99 - self.q01) / 2
        degenerate = half < DEGENERATE_EPS / 2
        return center, np.where(degenerate, 1.0, half), degenerate

    def _like(self, array: np.ndarray, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        if isinstance(x, torch.Tensor):
            dtype = x.dtype if x.is_floating_point() else torch.float32
            return torch.as_tensor(array, dtype=dtype, device=x.device)
        return array

    def _check_width(self, x: np.ndarray | torch.Tensor) -> None:
        if x.shape[-1] != self.action_dim:
            raise RsdError(f"actions have {x.shape[-1]} dims in the last axis, the normalizer {self.action_dim}")

    def normalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Raw actions `[..., D]` -> normalised (masked dims in [-1, 1]); numpy or torch in, same out."""
        self._check_width(x)
        center, half, degenerate = self._affine()
        mask = self.mask & ~degenerate
        center, half = self._like(center, x), self._like(half, x)
        if isinstance(x, torch.Tensor):
            scaled = ((x - center) / half).clamp(-1.0, 1.0)
            out = torch.where(self._like(mask, x).bool(), scaled, x)
            return torch.where(self._like(self.mask & degenerate, x).bool(), torch.zeros_like(x), out)
        x = as_float_array(x)
        scaled = np.clip((x - center) / half, -1.0, 1.0)
        out = np.where(mask, scaled, x)
        return np.where(self.mask & degenerate, 0.0, out).astype(x.dtype, copy=False)

    def unnormalize(self, x: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Normalised actions `[..., D]` -> raw env actions; the inverse of `normalize` inside the bounds."""
        self._check_width(x)
        center = (self.q99 + self.q01) / 2
        half = (self.q99 - self.q01) / 2  # 0 for a degenerate dim: every value maps to its constant
        if isinstance(x, torch.Tensor):
            raw = self._like(center, x) + x * self._like(half, x)
            return torch.where(self._like(self.mask, x).bool(), raw, x)
        x = as_float_array(x)
        return np.where(self.mask, center + x * half, x).astype(x.dtype, copy=False)

    # ---- serialisation -----------------------------------------------------------------------

    def to_dict(self) -> dict[str, list]:
        """json-able: `q01, q99, mean, std, min, max` (lists of D floats) and `mask` (D bools)."""
        out: dict[str, list] = {key: [float(v) for v in getattr(self, key)] for key in STAT_KEYS}
        out["mask"] = [bool(v) for v in self.mask]
        return out

    @classmethod
    def from_dict(cls, stats: dict, source: str = "stats") -> ActionNormalizer:
        """Inverse of `to_dict`; `source` names where the dict came from in error messages."""
        missing = [key for key in (*STAT_KEYS, "mask") if key not in stats]
        if missing:
            raise RsdError(f"{source}: normalizer stats lack keys {missing}")
        return cls(**{key: stats[key] for key in (*STAT_KEYS, "mask")})
