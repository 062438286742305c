"""`python -m rsd_pl record keep|restore|check`: a long benchmark's record, kept in a folder that is committed, so that
its steps can run on different machines (`scripts/four_suites.sh` calls it after every step and before the first).

The record of one suite, `<record>/`, holds what a later machine needs to go on and what the table is built from:

    <part>/episodes.jsonl            each run folder's episode log (`--parts`, default eval, replay, pro), whole
                                     lines only
    <part>/report.md, report.json    the run's reports, where written (replay.md, replay.json for a replay), and
    <part>/plots/*.png               the plots report.md shows
    checkpoints/registry.json        the exported models (`--models`, default rfsq and main) with their indexed
    checkpoints/<name>/v<N>/         versions: weights, config, metrics, lineage (no Lightning training state)

`keep` copies the run folders (`--runs`) and the checkpoint registry (`--registry`) into the record; `restore` copies
back the logs and models this machine lacks, or has less of (whole lines only; the reports are written again by the
next run of their step); `check` only checks. Neither ever mixes two runs: both first check that every log of the
record is the start of this machine's log of the same part, or the other way round (the logs are append-only), and
that the registry holds the same versions of every model the record holds (index entries equal: versions, times
and aliases, so a retrained `main@best` is another model; and the same weights). Anything else is an RsdError
naming the file, before anything is copied. A registry that lacks one of `--models` (a fit stopped between rfsq
and main) is not kept.

Hand-written: no library keeps an append-only log and a model registry in step across machines. Imports: durable,
errors (no torch: it reads registry.json as JSON).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from rsd_pl.durable import atomic_write
from rsd_pl.errors import RsdError

PARTS = ("eval", "replay", "pro")
MODELS = ("rfsq", "main")
LOG = "episodes.jsonl"
REPORTS = ("report.md", "report.json", "replay.md", "replay.json")
PLOTS = "plots"
INDEX = "registry.json"
CHECKPOINTS = "checkpoints"


def _whole_lines(data: bytes) -> bytes:
    """The log up to its last newline (a writer killed mid-line leaves a torn last line)."""
    return data[: data.rfind(b"\n") + 1]


def _lines(data: bytes) -> int:
    return data.count(b"\n")


def _index(path: Path) -> dict[str, Any]:
    try:
        index = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise RsdError(f"{path}: not a readable registry index ({error})") from error
    if not isinstance(index, dict) or not isinstance(index.get("artifacts"), dict):
        raise RsdError(f"{path}: not a registry index (no 'artifacts')")
    return index["artifacts"]


MODEL_PARTS = ("eval", "pro")
"""The parts whose logs were made with the record's models (the replay looks at nothing)."""


def check(runs: Path, registry: Path, record: Path, parts: tuple[str, ...] = PARTS) -> None:
    """RsdError, naming the file, when the record and this machine's folders are not one run."""
    for part in parts:
        mine, kept = runs / part / LOG, record / part / LOG
        if mine.is_file() and kept.is_file():
            a, b = _whole_lines(mine.read_bytes()), _whole_lines(kept.read_bytes())
            if not (a.startswith(b) or b.startswith(a)):
                raise RsdError(f"{kept} and {mine} are two different runs' logs (neither is the start of the other): "
                               f"move one of them away")
    record_index = record / CHECKPOINTS / INDEX
    if (registry / INDEX).is_file() and not record_index.is_file():
        logged = [record / part / LOG for part in parts if part in MODEL_PARTS and (record / part / LOG).is_file()]
        if logged:  # keep writes the models before any evaluation: they were lost, or never kept
            raise RsdError(f"{logged[0]} was evaluated with a model that {record / CHECKPOINTS} does not hold, so "
                           f"{registry} cannot be checked against it: restore the record's checkpoints, or move "
                           f"{record} away to start anew")
    if (registry / INDEX).is_file() and record_index.is_file():
        mine, kept = _index(registry / INDEX), _index(record_index)
        for name, entry in kept.items():
            if mine.get(name) != entry or any(_digest(registry / name / f"v{v['version']}")
                                              != _digest(record / CHECKPOINTS / name / f"v{v['version']}")
                                              for v in entry["versions"]):
                raise RsdError(f"{registry / INDEX}: {name} is not the model in {record_index} (a new fit?), and "
                               f"the record's logs were made with that one: move {record} away to start anew, or "
                               f"{registry} away to go on with the record's model")


def _digest(version: Path) -> str | None:
    """sha256 of a version's weights (the index's times are to the second: two quick fits can share them)."""
    weights = version / "weights.safetensors"
    return hashlib.sha256(weights.read_bytes()).hexdigest() if weights.is_file() else None


def _version_folders(source: Path, names: list[str]) -> list[Path]:
    """The indexed version folders of `names`, each checked to exist."""
    artifacts = _index(source / INDEX)
    folders = []
    for name in names:
        for version in artifacts[name]["versions"]:
            folder = source / name / f"v{version['version']}"
            if not folder.is_dir():
                raise RsdError(f"{source / INDEX}: {name}@{version['version']} is indexed but {folder} is missing")
            folders.append(folder)
    return folders


def _copy_registry(source: Path, target: Path, names: list[str]) -> None:
    """The indexed version folders of `names` (no lock file, no unindexed or temporary folder), each copied under a
    temporary name and renamed, then registry.json, written last: the index is the commit point, so a crash leaves
    at most version folders that no index names, which the next copy replaces."""
    folders = _version_folders(source, names)
    for folder in folders:
        dest = target / folder.parent.name / folder.name
        tmp = dest.with_name(f".{dest.name}.partial")
        for stale in (tmp, dest):  # unindexed: a crashed copy's
            shutil.rmtree(stale, ignore_errors=True)
        shutil.copytree(folder, tmp)
        tmp.rename(dest)
    index = json.loads((source / INDEX).read_text())
    index["artifacts"] = {name: index["artifacts"][name] for name in names}
    atomic_write(target / INDEX, json.dumps(index, indent=2, sort_keys=True))


def keep(runs: Path, registry: Path, record: Path, parts: tuple[str, ...] = PARTS,
         models: tuple[str, ...] = MODELS) -> list[str]:
    """Copy the run folders' logs and reports and the finished registry into the record; what was copied."""
    check(runs, registry, record, parts)
    names: list[str] = []
    if (registry / INDEX).is_file():
        artifacts = _index(registry / INDEX)
        record_index = record / CHECKPOINTS / INDEX
        if all(name in artifacts for name in models) and not (
                record_index.is_file() and set(_index(record_index)) >= set(models)):
            names = list(models)
            _version_folders(registry, names)  # before anything is copied
    done = []
    for part in parts:
        mine, kept = runs / part / LOG, record / part / LOG
        if not mine.is_file():
            continue
        data = _whole_lines(mine.read_bytes())
        before = kept.read_bytes() if kept.is_file() else None  # read once
        if before is not None and len(_whole_lines(before)) > len(data):
            continue  # another machine went further in this run (check): its log and reports stay
        (record / part).mkdir(parents=True, exist_ok=True)
        if before != data:
            atomic_write(kept, data)
            done.append(f"{kept} ({_lines(data)} runs)")
        # also when the log is unchanged: a rerun rewrites its reports (new pairings); the plots report.md shows
        reports = [runs / part / name for name in REPORTS] + sorted((runs / part / PLOTS).glob("*.png"))
        for source in reports:
            target = record / source.relative_to(runs)
            if source.is_file() and (not target.is_file() or target.read_bytes() != source.read_bytes()):
                target.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(target, source.read_bytes())
                done.append(str(target))
    if names:
        _copy_registry(registry, record / CHECKPOINTS, names)
        done.append(f"{record / CHECKPOINTS} ({', '.join(names)})")
    return done


def restore(runs: Path, registry: Path, record: Path, parts: tuple[str, ...] = PARTS) -> list[str]:
    """Copy back the logs and models this machine lacks or has less of; never overwrites other work. What was
    copied (the reports are written again by the next run of their step)."""
    check(runs, registry, record, parts)
    copy_models = (record / CHECKPOINTS / INDEX).is_file() and not (registry / INDEX).is_file()
    if copy_models and registry.is_dir():
        other = [p.name for p in registry.iterdir() if p.name != ".registry.lock" and not p.name.startswith(".tmp-")]
        if other:
            raise RsdError(f"{registry}: has no {INDEX} but holds {', '.join(sorted(other))}: not overwritten with "
                           f"the record's models; move it away")
    done = []
    for part in parts:
        mine, kept = runs / part / LOG, record / part / LOG
        data = _whole_lines(kept.read_bytes()) if kept.is_file() else b""
        if data and (not mine.is_file() or len(_whole_lines(mine.read_bytes())) < len(data)):
            (runs / part).mkdir(parents=True, exist_ok=True)
            atomic_write(mine, data)
            done.append(f"{mine} ({_lines(data)} runs)")
    if copy_models:
        _copy_registry(record / CHECKPOINTS, registry, list(_index(record / CHECKPOINTS / INDEX)))
        done.append(f"{registry} ({', '.join(_index(registry / INDEX))})")
    return done


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsd_pl record", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=("keep", "restore", "check"))
    parser.add_argument("--runs", required=True, help="the suite's run folders (<runs>/<part>/episodes.jsonl)")
    parser.add_argument("--registry", required=True, help="the suite's checkpoint registry")
    parser.add_argument("--record", required=True, help="the suite's record (committed)")
    parser.add_argument("--parts", default=",".join(PARTS), help="run folders kept (default: %(default)s)")
    parser.add_argument("--models", default=",".join(MODELS), help="models kept, once all exist (default: %(default)s)")
    args = parser.parse_args(argv)
    parts = tuple(p for p in args.parts.split(",") if p)
    runs, registry, record = Path(args.runs), Path(args.registry), Path(args.record)
    if args.action == "check":
        check(runs, registry, record, parts)
        return 0
    if args.action == "keep":
        done = keep(runs, registry, record, parts, tuple(m for m in args.models.split(",") if m))
    else:
        done = restore(runs, registry, record, parts)
    for line in done:
        print(f"record {args.action}: {line}")
    return 0
