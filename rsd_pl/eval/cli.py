"""`python -m rsd_pl eval --config configs/eval_libero_spatial.yaml [--field value ...]`: parse, check, then one
`EvalSession` run. Everything a run needs is checked before the first episode: suites, tasks, modes, registry
names, lineage of tokenizer -> main -> draft, a draft for speculative mode, the render side.

Imports: eval.config, eval.episode_log, eval.episodes, eval.session (and jsonargparse).
"""

from __future__ import annotations

from rsd_pl.eval.config import EvalConfig, validate_config
from rsd_pl.eval.episode_log import EPISODES_FILE, read_episodes
from rsd_pl.eval.episodes import output_lock
from rsd_pl.eval.session import EvalSession


def parse_config(argv: list[str]) -> EvalConfig:
    """`--config file.yaml` plus any field on the command line (e.g. `--num_trials 5 --modes [ar]`)."""
    from jsonargparse import auto_cli, set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)  # field docstrings become --help
    return auto_cli(EvalConfig, args=argv, as_positional=False, prog="python -m rsd_pl eval")


def main(argv: list[str]) -> int:
    """`python -m rsd_pl eval --config configs/eval_libero_spatial.yaml [--field value ...]`."""
    cfg = parse_config(argv)
    validate_config(cfg, logged_modes={r["mode"] for r in read_episodes(cfg.out)})  # extending a run: its modes count
    with output_lock(cfg.out, "eval"):  # before the models load: a second writer is refused at once
        return _main(cfg)


def _main(cfg: EvalConfig) -> int:
    session = EvalSession.open(cfg)
    report = session.run(cfg)
    if report is not None and report["errors"]:
        print(f"eval: {len(report['errors'])} episode(s) ended in an error (tracebacks in {cfg.out}/"
              f"{EPISODES_FILE}); exit code 1")
        return 1
    return 0
