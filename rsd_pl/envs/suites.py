"""LIBERO suite facts (DESIGN.md section 6) and index parsing. Pure Python: no LIBERO import."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rsd_pl.errors import RsdError

WAIT_STEPS = 10  # no-op steps after loading an init state: objects drop ~7 cm and settle
WAIT_ACTION = np.array([0, 0, 0, 0, 0, 0, -1], dtype=np.float32)  # gripper open, no motion


@dataclass(frozen=True)
class SuiteSpec:
    """One LIBERO benchmark suite, or a LIBERO-PRO perturbation of one (`base`, `perturbation`)."""

    name: str
    max_steps: int  # policy steps per episode, not counting the WAIT_STEPS
    num_tasks: int
    base: str | None = None          # LIBERO-PRO: the benchmark suite it perturbs
    perturbation: str | None = None  # LIBERO-PRO: "lan", "object", "swap" or "task"; or "paraphrase" (below)

    @property
    def libero(self) -> str:
        """The LIBERO benchmark whose scene (BDDL) and init states the suite runs."""
        return self.base if self.perturbation == PARAPHRASE else self.name


_BENCHMARK = (SuiteSpec("libero_spatial", 220, 10), SuiteSpec("libero_object", 280, 10),
              SuiteSpec("libero_goal", 300, 10), SuiteSpec("libero_10", 520, 10))

PRO_PERTURBATIONS = {"lan": "language (paraphrased instruction)", "object": "object appearance, size and colour",
                     "swap": "object positions swapped", "task": "a different task in the same scene"}
"""LIBERO-PRO's perturbations whose BDDL and init-state files the installed LIBERO package ships for the four
benchmark suites (10 tasks x 50 init states each). Its `_env`, `_temp` and `*_ood` suites are listed by LIBERO's
benchmark too, but without init-state files, so they are not offered (an unknown suite is an error)."""

PARAPHRASE = "paraphrase"
"""`<suite>_paraphrase`: the benchmark suite itself (its scene and its 50 init states) with LIBERO-PRO's paraphrased
instruction (that of `<suite>_lan`). LIBERO-PRO's `_lan` BDDL differs from the base's only in its language line, but
it ships its own init states, which move the objects by 1.5-3 cm; so `_lan` against clean mixes the wording with new
placements, while `_paraphrase` trial k is clean trial k with only the words changed."""

SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        *_BENCHMARK,
        SuiteSpec("libero_90", 400, 90),
        *(SuiteSpec(f"{base.name}_{p}", base.max_steps, base.num_tasks, base.name, p)
          for base in _BENCHMARK for p in PRO_PERTURBATIONS),
        *(SuiteSpec(f"{base.name}_{PARAPHRASE}", base.max_steps, base.num_tasks, base.name, PARAPHRASE)
          for base in _BENCHMARK),
    )
}


def suite_spec(name: str) -> SuiteSpec:
    """The spec of a suite; RsdError naming the valid suites otherwise."""
    if name not in SUITES:
        raise RsdError(f"unknown LIBERO suite {name!r}; valid suites: {', '.join(SUITES)}")
    return SUITES[name]


def check_index(what: str, index: int, count: int) -> int:
    """`index` must lie in [0, count); RsdError naming the valid range otherwise."""
    if not isinstance(index, int | np.integer) or not 0 <= index < count:
        raise RsdError(f"{what} {index!r} out of range: valid are 0..{count - 1}")
    return int(index)


def parse_index_list(spec: str | int | list[int] | tuple[int, ...]) -> list[int]:
    """'0-9,12' -> [0, 1, ..., 9, 12]; an int or a list passes through. Sorted, no duplicates."""
    if isinstance(spec, int):
        return [spec]
    if isinstance(spec, list | tuple):
        return sorted({int(v) for v in spec})
    indices: set[int] = set()
    for part in str(spec).replace(" ", "").split(","):
        try:
            if "-" in part:
                first, last = (int(v) for v in part.split("-", 1))
                if last < first:
                    raise ValueError(part)
                indices.update(range(first, last + 1))
            else:
                indices.add(int(part))
        except ValueError as error:
            raise RsdError(f"bad index list {spec!r}: use e.g. '0-9' or '0,3,5' ({error})") from error
    if not indices or min(indices) < 0:
        raise RsdError(f"bad index list {spec!r}: indices must be >= 0")
    return sorted(indices)
