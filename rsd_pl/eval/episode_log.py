"""The episode log of an evaluation: `<out>/episodes.jsonl`, one JSON line per finished (episode, mode),
appended and flushed as each ends (per-rank files under DDP, merged at the end); read back for resuming and
for the report. A torn last line (a killed writer) is ignored by readers and cut off by the next writer
before it appends (`rsd_pl.durable.repair_torn_tail`), so that episode is redone and logged on a line of
its own; a bad line anywhere else is an error naming the file and line.

Imports: rsd_pl.durable only; everything in eval may import it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rsd_pl.durable import append_jsonl, repair_torn_tail
from rsd_pl.errors import RsdError

EPISODES_FILE = "episodes.jsonl"
RANK_FILE_GLOB = "episodes.rank*.jsonl"


def episode_key(record: dict[str, Any]) -> tuple[str, int, int, str]:
    """The identity of an episode for resuming: (suite, task_id, trial, mode)."""
    return (record["suite"], int(record["task_id"]), int(record["trial"]), record["mode"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of one JSONL file; a torn last line (a killed writer) is dropped, any other bad line raises."""
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            if number == len(lines):  # the writer was killed mid-line: that episode is simply redone
                break
            raise RsdError(f"{path}:{number}: not a JSON line ({error})") from error
    return records


def read_episodes(out_dir: str | Path) -> list[dict[str, Any]]:
    """All finished episodes under `out_dir` (merged file and per-rank files), one per key: the first
    record, unless it is an error and a later run of the same episode exists (a retry)."""
    out_dir = Path(out_dir)
    paths = [out_dir / EPISODES_FILE, *sorted(out_dir.glob(RANK_FILE_GLOB))]
    seen: dict[tuple[str, int, int, str], dict[str, Any]] = {}
    for path in paths:
        if path.is_file():
            for record in read_jsonl(path):
                key = episode_key(record)
                if key not in seen or seen[key]["status"] == "error":
                    seen[key] = record
    return list(seen.values())


# --- writing the episode log (the evaluation loop) ------------------------------------------------


class EpisodeLog:
    """Appends one JSON line per finished episode and flushes it (a kill loses at most one line, which the
    next writer cuts off before appending)."""

    def __init__(self, out_dir: Path, rank: int, world_size: int) -> None:
        name = EPISODES_FILE if world_size == 1 else f"episodes.rank{rank}.jsonl"
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / name
        repair_torn_tail(self.path)

    def append(self, record: dict[str, Any]) -> None:
        append_jsonl(self.path, record)


def merge_rank_files(out_dir: Path) -> None:
    """Fold per-rank logs into episodes.jsonl (skipping episodes already there, unless only as an
    error: a retry is appended after it), then remove them."""
    target = out_dir / EPISODES_FILE
    repair_torn_tail(target)
    merged = {episode_key(r) for r in read_episodes_file(target) if r["status"] != "error"}
    for path in sorted(out_dir.glob(RANK_FILE_GLOB)):
        for record in read_episodes_file(path):
            if episode_key(record) not in merged:
                merged.add(episode_key(record))
                append_jsonl(target, record)
    for path in sorted(out_dir.glob(RANK_FILE_GLOB)):
        path.unlink()


def read_episodes_file(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.is_file() else []
