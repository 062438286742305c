"""Phase 3: LIBERO evaluation. Where things are:

    config.py       EvalConfig (every option, validated), ObsSpec, the render side
    models.py       loading the models (registry, lineage checked; OFT's checkpoint) and the policy factory
    session.py      EvalSession: the one set-up path of eval, sweep, multimodal and budget
    episodes.py     the episodes a run still has to do (resume from episodes.jsonl), the output-folder lock
    loop.py         the Lightning predict loop (EvalModule, run_eval)
    runner.py       one episode in one env;  vector.py: N envs in worker processes, decoded as one batch
    policy.py       RSDPolicy: reset() / select_action(batch) and its batched form, over the engine
    episode_log.py  episodes.jsonl;  report.py, stats.py, plots.py, plot_labels.py, video.py, lerobot.py: the report
    cli.py          `python -m rsd_pl eval`;  sweep.py, multimodal.py, budget.py, benchmark_table.py: the studies

Heavy imports (LIBERO, Lightning) happen in the submodules that need them."""
