"""The checkpoint registry shared by all phases (DESIGN.md section 8).

Layout under the root (default: env var ``RSD_CHECKPOINTS``, else ``checkpoints``)::

    registry.json                  index: names -> versions, created time, aliases, best rule
    .registry.lock                 fcntl lock taken around every index update
    <name>/v<N>/weights.safetensors
    <name>/v<N>/config.json        constructor config (how to rebuild the module)
    <name>/v<N>/metrics.json       validation metrics of the exported weights
    <name>/v<N>/lineage.json       where it came from (data fingerprint, parent artifacts, run)
    <name>/v<N>/<extra>.json       e.g. stats.json (action normalisation statistics)

Specs: ``rfsq@best``, ``rfsq@latest``, ``rfsq@3`` (also ``rfsq@v3``), bare ``rfsq`` = latest.

Atomicity: an artifact is written into ``<name>/.tmp-*`` and renamed to ``v<N>`` in one step;
``registry.json`` is written to a temp file and swapped in with ``os.replace``. Both happen while
holding the lock, so concurrent exports (two processes, DDP ranks) never lose a version. A crash
leaves either the old index or the new one, and never an indexed artifact that is half written;
a folder renamed but not yet indexed is skipped by later version numbers and never resolved.
Weights load with safetensors only: loading never unpickles.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rsd_pl.durable import atomic_write, disk_full_error, fsync_path, is_disk_full
from rsd_pl.errors import RsdError

INDEX_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
WEIGHTS_FILE = "weights.safetensors"
CORE_JSON = ("config", "metrics", "lineage")
ALIASES = ("latest", "best")
INDEX_FORMAT = 1
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

Mode = Literal["min", "max"]


@dataclass(frozen=True)
class Artifact:
    """One exported version: ``name@version`` stored in ``path``."""

    name: str
    version: int
    path: Path
    created: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    aliases: tuple[str, ...] = field(default=())

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    def load_tensors(self, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The weights, read with safetensors (no pickle)."""
        weights = self.path / WEIGHTS_FILE
        if not weights.is_file():
            raise RsdError(f"{self.spec}: weights file {weights} is missing")
        try:
            return load_file(weights, device=device)
        except SafetensorError as error:
            raise RsdError(f"{self.spec}: cannot read {weights}: {error}") from error

    def identity(self) -> str:
        """`name@version sha256:<16 hex of the weights>`: what an evaluation names its model by, so a resumed run
        with other weights (a refit, another machine's registry) is refused, not mixed in."""
        return f"{self.spec} sha256:{(weights_sha256(self.path) or '(no weights)')[:16]}"

    def read_json(self, key: str) -> dict[str, Any]:
        """An extra json file of the artifact, e.g. ``read_json("stats")`` -> stats.json."""
        path = self.path / f"{key}.json"
        if not path.is_file():
            known = sorted(p.stem for p in self.path.glob("*.json"))
            raise RsdError(f"{self.spec}: no {key}.json in {self.path} (has: {', '.join(known)})")
        return _read_json_file(path)


class Registry:
    """Versioned, aliased artifacts under ``root``; see the module docstring for the layout."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root if root is not None else os.environ.get("RSD_CHECKPOINTS", "checkpoints"))

    # ----- reading -------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._read_index()["artifacts"])

    def versions(self, name: str) -> list[int]:
        return [entry["version"] for entry in self._entry(self._read_index(), name)["versions"]]

    def best_rule(self, name: str) -> tuple[str | None, str | None]:
        """(metric, "min" | "max") that picks ``name@best``; (None, None) before any metric."""
        entry = self._entry(self._read_index(), name)
        return entry["best_metric"], entry["best_mode"]

    def resolve(self, spec: str) -> Artifact:
        """``name``, ``name@latest``, ``name@best``, ``name@3`` -> the artifact."""
        name, selector = parse_spec(spec)
        entry = self._entry(self._read_index(), name)
        version = _select_version(entry, name, selector)
        return self._artifact(entry, name, version)

    def artifacts(self, name: str | None = None) -> list[Artifact]:
        """Every indexed artifact (of one name, or of all), oldest version first."""
        index = self._read_index()
        names = [name] if name is not None else sorted(index["artifacts"])
        out = []
        for each in names:
            entry = self._entry(index, each)
            out += [self._artifact(entry, each, v["version"]) for v in entry["versions"]]
        return out

    # ----- writing -------------------------------------------------------------------------
    def export(
        self,
        name: str,
        tensors: dict[str, torch.Tensor],
        config: dict[str, Any],
        metrics: dict[str, Any],
        lineage: dict[str, Any],
        extra_json: dict[str, dict[str, Any]] | None = None,
        best_metric: str | None = None,
        best_mode: Mode = "min",
        best_group: str | None = None,
    ) -> Artifact:
        """Write a new version of ``name`` and update ``latest`` and ``best``.

        ``best_group`` says which versions' metrics are comparable (e.g. drafts distilled from the
        same main model): ``best`` is chosen among the versions in the latest version's group, so a
        retrained parent never leaves ``best`` pointing at a child of the old parent."""
        _check_name(name)
        files = _json_files(config, metrics, lineage, extra_json or {})
        weights = _prepare_tensors(name, tensors)
        self.root.mkdir(parents=True, exist_ok=True)
        with self._locked():
            index = self._read_index()
            entry = index["artifacts"].setdefault(name, _new_entry())
            metric, mode = _best_rule(entry, name, best_metric, best_mode)
            value = _metric_value(name, metrics, metric) if metric is not None else None
            version = self._next_version(entry, name)
            created = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            self._write_artifact_dir(name, version, weights, files)
            entry.update(best_metric=metric, best_mode=mode)
            entry["versions"].append({"version": version, "created": created, "best_value": value,
                                      "best_group": best_group})
            entry["aliases"] = _aliases(entry)
            self._write_index(index)
        return self._artifact(entry, name, version)

    # ----- internals -----------------------------------------------------------------------
    @property
    def index_path(self) -> Path:
        return self.root / INDEX_FILE

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.root / LOCK_FILE, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, Any]:
        if not self.index_path.is_file():
            return {"format": INDEX_FORMAT, "artifacts": {}}
        index = _read_json_file(self.index_path)
        artifacts = index.get("artifacts")
        if index.get("format") != INDEX_FORMAT or not isinstance(artifacts, dict):
            raise RsdError(
                f"{self.index_path}: not a registry index (expected keys 'format': {INDEX_FORMAT} "
                f"and 'artifacts': {{...}}, got keys {sorted(index)})"
            )
        return index

    def _entry(self, index: dict[str, Any], name: str) -> dict[str, Any]:
        entry = index["artifacts"].get(name)
        if entry is None:
            known = ", ".join(sorted(index["artifacts"])) or "none"
            raise RsdError(f"unknown artifact name {name!r} in {self.index_path} (known: {known})")
        return entry

    def _artifact(self, entry: dict[str, Any], name: str, version: int) -> Artifact:
        path = self.root / name / f"v{version}"
        if not path.is_dir():
            raise RsdError(f"{name}@{version}: indexed in {self.index_path} but folder {path} is missing")
        created = next(v["created"] for v in entry["versions"] if v["version"] == version)
        aliases = tuple(alias for alias in ALIASES if entry["aliases"].get(alias) == version)
        core = {key: _read_json_file(path / f"{key}.json") for key in CORE_JSON}
        return Artifact(name, version, path, created, core["config"], core["metrics"], core["lineage"], aliases)

    def _next_version(self, entry: dict[str, Any], name: str) -> int:
        """One past every version indexed or present on disk (an unindexed folder is never reused)."""
        on_disk = [int(p.name[1:]) for p in (self.root / name).glob("v*") if p.name[1:].isdigit()]
        indexed = [v["version"] for v in entry["versions"]]
        return max([0, *on_disk, *indexed]) + 1

    def _write_artifact_dir(
        self, name: str, version: int, weights: dict[str, torch.Tensor], files: dict[str, str]
    ) -> None:
        parent = self.root / name
        parent.mkdir(parents=True, exist_ok=True)
        for stale in parent.glob(".tmp-*"):  # left by a crashed export; we hold the lock
            shutil.rmtree(stale)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-v{version}-", dir=parent))
        try:
            save_file(weights, tmp / WEIGHTS_FILE, metadata={"name": name, "version": str(version)})
            for key, text in files.items():
                (tmp / f"{key}.json").write_text(text)
            for path in tmp.iterdir():
                fsync_path(path)
            os.rename(tmp, parent / f"v{version}")
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            if is_disk_full(error):
                raise disk_full_error(parent / f"v{version}", f"{self.index_path} is unchanged", error) from error
            raise
        fsync_path(parent)

    def _write_index(self, index: dict[str, Any]) -> None:
        atomic_write(self.index_path, json.dumps(index, indent=2, sort_keys=True))


# ----- helpers ---------------------------------------------------------------------------------
def weights_sha256(version: Path) -> str | None:
    """sha256 of the tensors in a version folder's weights (None if absent): the header's tensor entries (names,
    dtypes, shapes, offsets) as sorted JSON, then the data, streamed (a 7B main is 15 GB). Not of the file's bytes:
    safetensors writes the `__metadata__` keys in no fixed order, so the same weights saved twice can differ there.
    Hand-written: safetensors offers no digest of its content."""
    weights = Path(version) / WEIGHTS_FILE
    if not weights.is_file():
        return None
    with open(weights, "rb") as handle:
        try:
            header = json.loads(handle.read(int.from_bytes(handle.read(8), "little")))
            header.pop("__metadata__", None)
        except (ValueError, AttributeError, MemoryError, OverflowError) as error:
            raise RsdError(f"{weights}: not a safetensors file (its header does not parse: {error})") from error
        digest = hashlib.sha256(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def parse_spec(spec: str) -> tuple[str, str]:
    """``"rfsq@best"`` -> ``("rfsq", "best")``; bare ``"rfsq"`` -> ``("rfsq", "latest")``."""
    name, _, selector = spec.partition("@")
    _check_name(name)
    return name, selector or "latest"


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise RsdError(f"bad artifact name {name!r}: use letters, digits, '_', '-', '.' (no '@' or '/')")


def _select_version(entry: dict[str, Any], name: str, selector: str) -> int:
    versions = [v["version"] for v in entry["versions"]]
    if selector in ALIASES:
        if selector not in entry["aliases"]:
            raise RsdError(f"{name}@{selector}: {name} has no {selector!r} alias (no best metric exported)")
        return entry["aliases"][selector]
    digits = selector[1:] if selector.startswith("v") else selector
    if not digits.isdigit():
        raise RsdError(f"{name}@{selector}: unknown alias or version (use latest, best or one of {versions})")
    if int(digits) not in versions:
        raise RsdError(f"{name}@{selector}: no such version (versions: {versions})")
    return int(digits)


def _new_entry() -> dict[str, Any]:
    return {"best_metric": None, "best_mode": None, "aliases": {}, "versions": []}


def _best_rule(entry: dict[str, Any], name: str, metric: str | None, mode: Mode) -> tuple[str | None, Mode | None]:
    """The (metric, mode) that picks ``best``; fixed per name by its first export with a metric."""
    kept = entry["best_metric"], entry["best_mode"]
    if metric is None:
        return kept
    if mode not in ("min", "max"):
        raise RsdError(f"best_mode must be 'min' or 'max', got {mode!r}")
    if kept[0] is not None and kept != (metric, mode):
        raise RsdError(f"{name}: best is chosen by {kept[0]} ({kept[1]}); cannot export with {metric} ({mode})")
    return metric, mode


def _metric_value(name: str, metrics: dict[str, Any], metric: str) -> float:
    if metric not in metrics:
        raise RsdError(f"{name}: best metric {metric!r} not in metrics (has: {', '.join(sorted(metrics))})")
    return float(metrics[metric])


def _aliases(entry: dict[str, Any]) -> dict[str, int]:
    """``latest`` = highest version; ``best`` = best finite value (earliest on ties) among the
    versions in the latest version's ``best_group``."""
    latest = max(entry["versions"], key=lambda v: v["version"])
    aliases = {"latest": latest["version"]}
    group = latest.get("best_group")
    scored = [v for v in entry["versions"] if v["best_value"] is not None and math.isfinite(v["best_value"])
              and v.get("best_group") == group]
    if scored:
        sign = 1.0 if entry["best_mode"] == "min" else -1.0
        aliases["best"] = min(scored, key=lambda v: (sign * v["best_value"], v["version"]))["version"]
    return aliases


def _json_files(
    config: dict[str, Any], metrics: dict[str, Any], lineage: dict[str, Any], extra: dict[str, dict[str, Any]]
) -> dict[str, str]:
    """Serialise every json file up front, so bad input fails before anything is written."""
    clash = sorted(set(extra) & set(CORE_JSON))
    if clash:
        raise RsdError(f"extra_json keys {clash} clash with the core files {list(CORE_JSON)}")
    files = {"config": config, "metrics": metrics, "lineage": lineage, **extra}
    out = {}
    for key, value in files.items():
        if not _NAME_RE.match(key):
            raise RsdError(f"bad extra_json key {key!r}: it becomes a file name")
        if not isinstance(value, dict):
            raise RsdError(f"{key}.json must hold a dict, got {type(value).__name__}")
        try:
            out[key] = json.dumps(value, indent=2, sort_keys=True, default=_json_scalar) + "\n"
        except (TypeError, ValueError) as error:
            raise RsdError(f"{key}.json: value is not JSON serialisable: {error}") from error
    return out


def _json_scalar(value: Any) -> Any:
    """0-d tensors and numpy scalars -> Python numbers; anything else is an error."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} {value!r}")


def _prepare_tensors(name: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing memory are cloned (safetensors needs it)."""
    if not tensors:
        raise RsdError(f"{name}: no tensors to export")
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise RsdError(f"{name}: tensor {key!r} is a {type(tensor).__name__}, not a torch.Tensor")
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[key] = tensor.clone() if pointer in seen else tensor
        seen.add(pointer)
    return out


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except FileNotFoundError as error:
        raise RsdError(f"missing file {path}") from error
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RsdError(f"corrupted {path}: {error}") from error
    if not isinstance(value, dict):
        raise RsdError(f"corrupted {path}: expected a JSON object, got {type(value).__name__}")
    return value


# ----- `python -m rsd_pl registry` ---------------------------------------------------------------
def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _key_metrics(art: Artifact, best_metric: str | None, limit: int = 3) -> str:
    keys = [best_metric] if best_metric in art.metrics else []
    keys += [k for k in sorted(art.metrics) if k not in keys][: limit - len(keys)]
    shown = " ".join(f"{k}={_short(art.metrics[k])}" for k in keys)
    hidden = len(art.metrics) - len(keys)
    return shown + (f" (+{hidden})" if hidden > 0 else "")


def _lineage_summary(art: Artifact, width: int = 40) -> str:
    """Short scalar lineage entries (data fingerprint, parent specs); `show` prints all of it."""
    parts = [f"{k}={_short(v)}" for k, v in sorted(art.lineage.items()) if v is not None]
    shown = [part for part in parts if len(part) <= width]
    hidden = len(parts) - len(shown)
    return " ".join(shown) + (f" (+{hidden})" if hidden else "")


def format_table(registry: Registry, name: str | None = None) -> str:
    """One row per artifact: name, version, aliases, created, key metrics, lineage."""
    rows = [("name", "version", "aliases", "created", "metrics", "lineage")]
    for art in registry.artifacts(name):
        best_metric, _ = registry.best_rule(art.name)
        rows.append(
            (
                art.name,
                str(art.version),
                ",".join(art.aliases),
                art.created,
                _key_metrics(art, best_metric),
                _lineage_summary(art),
            )
        )
    if len(rows) == 1:
        return f"no artifacts in {registry.root}"
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def format_artifact(art: Artifact) -> str:
    """An artifact's spec, path, aliases, files, config, metrics and lineage."""
    files = sorted(p.name for p in art.path.iterdir())
    head = [
        f"{art.spec}  ({', '.join(art.aliases) or 'no alias'})",
        f"path:    {art.path}",
        f"created: {art.created}",
        f"files:   {', '.join(files)}",
    ]
    sections = [(key, getattr(art, key)) for key in CORE_JSON]
    body = [f"{key}:\n" + json.dumps(value, indent=2, sort_keys=True) for key, value in sections]
    return "\n".join(head + body)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rsd_pl registry", description="List and inspect checkpoint registry artifacts."
    )
    root_help = "registry folder (default: $RSD_CHECKPOINTS, else ./checkpoints)"
    parser.add_argument("--root", default=None, help=root_help)
    # --root is accepted after the command too; SUPPRESS keeps a value given before it
    after = argparse.ArgumentParser(add_help=False)
    after.add_argument("--root", default=argparse.SUPPRESS, help=root_help)
    commands = parser.add_subparsers(dest="command", required=True)
    list_cmd = commands.add_parser("list", parents=[after],
                                   help="table of artifacts: name, version, aliases, metrics, lineage")
    list_cmd.add_argument("name", nargs="?", default=None, help="only this artifact name")
    show = commands.add_parser("show", parents=[after], help="config, metrics and lineage of one artifact")
    show.add_argument("spec", help="name, name@latest, name@best or name@<version>")
    return parser


def main(argv: list[str]) -> int:
    """`registry list [NAME]` and `registry show SPEC`, with `--root DIR` before or after the command."""
    args = _parser().parse_args(argv)
    registry = Registry(args.root)
    if args.command == "list":
        print(format_table(registry, args.name))
    else:
        print(format_artifact(registry.resolve(args.spec)))
    return 0
