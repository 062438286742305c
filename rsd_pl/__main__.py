"""`python -m rsd_pl <command>`: maps each subcommand to a plain function `main(argv) -> int`.

Modules are imported only when their command runs, so `--help` is instant and LIBERO is never
imported by commands that do not need it.
"""

from __future__ import annotations

import importlib
import sys

from rsd_pl.errors import RsdError

# command -> (module, function, one-line help)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "fit": ("rsd_pl.lit.cli", "main", "train a phase (--config configs/rfsq.yaml | main_tiny.yaml | draft_tiny.yaml)"),
    "eval": ("rsd_pl.eval.cli", "main", "LIBERO rollouts with the decoding engine (--config configs/eval_*.yaml)"),
    "collect": ("rsd_pl.collect", "main", "generate demonstrations with the scripted expert into LIBERO-format HDF5"),
    "synthetic": ("rsd_pl.data.synthetic", "main", "write a small synthetic LIBERO-format demo file (no simulator)"),
    "expert-check": ("rsd_pl.experts.check", "main", "success rate of the scripted expert per task"),
    "registry": ("rsd_pl.registry", "main", "list / show artifacts of the checkpoint registry"),
    "bench": ("rsd_pl.bench", "main", "latency per decoding mode, training throughput"),
    "multimodal": ("rsd_pl.eval.multimodal", "main",
                   "the multimodality experiment: bimodal demos, decoding arms, grasp sides from the paths"),
    "multimodal-offline": ("rsd_pl.eval.multimodal_offline", "main",
                           "the multimodality experiment on synthetic bimodal chunks (no simulator, ~30 s)"),
    "budget": ("rsd_pl.eval.budget", "main",
               "per-layer information, proposal acceptance and forward costs: where speculation can pay"),
    "sweep": ("rsd_pl.eval.sweep", "main",
              "one resumable evaluation over a grid of decoding settings, with a trade-off plot"),
    "layouts": ("rsd_pl.eval.layouts", "main",
                "the token layouts of scripts/layouts.sh side by side: success, speed over ar_exit, coherence"),
    "replay": ("rsd_pl.eval.replay", "main",
               "the blind floor: one demo per task replayed open loop from the benchmark init states, paired"),
    "benchmark-table": ("rsd_pl.eval.benchmark_table", "main",
                        "a suite's benchmark: every observation setting's eval report side by side"),
    "record": ("rsd_pl.record", "main",
               "keep a long benchmark's logs and models in a committed folder, restore them on another machine"),
    "suites-table": ("rsd_pl.eval.suites_table", "main",
                     "the users' table: every LIBERO suite's eval side by side, the average, LIBERO-PRO against clean"),
}


def usage() -> str:
    lines = ["usage: python -m rsd_pl <command> [options]", "", "commands:"]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += ["", "`python -m rsd_pl <command> --help` shows the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"rsd_pl: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    try:
        return int(function(rest) or 0)
    except RsdError as error:
        print(f"rsd_pl {command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
