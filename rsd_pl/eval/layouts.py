"""`python -m rsd_pl layouts`: the token layouts that scripts/layouts.sh trained and evaluated, side by side.

Per layout (a folder `<runs>/<name>` with its registry `<registry>/<name>`): the tokenizer's error per prefix
depth and code usage, the main model's token accuracy per layer (and the majority baseline), the draft's
agreement, success of every mode with Wilson intervals (the sweep's rows, the same episodes in every layout),
each speculative variant's speedup over `ar_exit` on the paired episodes of the same run (bootstrap interval)
and its acceptance by depth, budget's ceiling (every proposal accepted) and the fraction of it reached, and
multimodal-offline's coherence (the share of sampled chunks on one of the two modes).

Output: `<runs>/layouts.json`, `<runs>/layouts.md` and `<runs>/layouts.png`. Missing pieces (a layout still
running) are shown as `-`. Hand-written aggregation: the numbers come from the sweep, budget and
multimodal-offline outputs and the registry; nothing is recomputed but the paired speedups.

Imports: registry, eval.episode_log, eval.report, eval.stats; matplotlib for the figure.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from rsd_pl.durable import atomic_file, atomic_write
from rsd_pl.errors import RsdError
from rsd_pl.eval.episode_log import read_episodes
from rsd_pl.eval.multimodal_offline import on_one_mode
from rsd_pl.eval.report import _json_safe, mode_summary
from rsd_pl.eval.stats import bootstrap_latency_ratio, pair_by_episode, paired_success_test, wilson_interval

BASELINES = ("l1", "parallel", "ar", "ar_exit")
SAMPLED = ("ar_sampled", "speculative_sampled")
P_VALUES = (0.7, 0.5)


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _load_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise RsdError(f"{path}: not valid JSON ({error}); rerun the step that writes it") from error


def variant_name(point: dict[str, Any], base: dict[str, Any]) -> str:
    """A speculative sweep row's settings -> 'lossless', 'lossless + exit', 'self lossless + exit', 'relaxed + exit'."""
    settings = {**base, **point}
    name = "lossless" if settings.get("acceptance", "exact") in ("exact", "sampling") else "relaxed"
    if settings.get("draft_source") == "parallel":
        name = "self " + name
    return name + (" + exit" if settings.get("early_exit_bound") is not None else "")


def _artifact(registry, name: str):
    """name@best (what the pipeline evaluates), else name@latest, else None (not trained yet)."""
    for alias in ("best", "latest"):
        try:
            return registry.resolve(f"{name}@{alias}")
        except RsdError:
            continue
    return None


def training_figures(registry_dir: Path) -> dict[str, Any]:
    """The registry's tokenizer / main / draft metrics and the layout of the tokenizer."""
    from rsd_pl.models.layout import TokenLayout
    from rsd_pl.registry import Registry

    out: dict[str, Any] = {}
    if not registry_dir.is_dir():
        return out
    registry = Registry(registry_dir)
    if (rfsq := _artifact(registry, "rfsq")) is not None:
        model = rfsq.config["model"]
        layout = TokenLayout.of(model["chunk_len"], model["latent_dim"], model["num_levels"], model.get("positions"),
                                model.get("group", 1))
        layers = model["num_layers"]
        out["layout"] = {**layout.to_dict(), "num_layers": layers, "describe": layout.describe(),
                         "tokens_per_layer": layout.tokens_per_layer, "vocab_size": layout.vocab_size}
        out["tokenizer_mae"] = [rfsq.metrics.get(f"val/mae_depth_{m}", math.nan) for m in range(1, layers + 1)]
        out["codes_used"] = [rfsq.metrics.get(f"val/codes_used_layer_{m}", math.nan) for m in range(1, layers + 1)]
    if (main := _artifact(registry, "main")) is not None:
        layers = main.config["model"]["num_layers"]
        out["token_acc"] = [main.metrics.get(f"val/token_acc_layer_{m}", math.nan) for m in range(1, layers + 1)]
        out["majority"] = [main.metrics.get(f"val/majority_layer_{m}", math.nan) for m in range(1, layers + 1)]
        out["parallel_acc"] = [main.metrics.get(f"val/parallel_acc_layer_{m}", math.nan)
                               for m in range(1, layers + 1)]
        out["l1_ar"], out["l1_regression"] = main.metrics.get("val/l1_ar"), main.metrics.get("val/l1_regression")
        if main.config["model"].get("factored") and "layout" in out:
            joint = main.config["model"].get("joint_layers")
            where = "" if not joint else " (joint on layer 1)" if joint == 1 else f" (joint on layers 1-{joint})"
            out["layout"]["describe"] += ", factored heads" + where
    if (draft := _artifact(registry, "draft")) is not None:
        out["draft_agreement_layer_2"] = draft.metrics.get("val/agreement_layer_2")
    return out


def sweep_figures(sweep_dir: Path) -> dict[str, Any]:
    """Per baseline mode and speculative variant: success, latency, acceptance by depth; speedups over ar_exit
    and l1 vs ar on the paired episodes."""
    sweep = _load_json(sweep_dir / "sweep.json")
    if sweep is None:
        return {}
    base = (sweep.get("config") or {}).get("eval", {}).get("decoding", {})
    records = {}
    rows: dict[str, dict[str, Any]] = {}
    for row in sweep["rows"]:
        name = row["mode"] if row["baseline"] else variant_name(row["point"], base)
        run_records = records.setdefault(row["run"], read_episodes(sweep_dir / row["run"]))
        mine = [r for r in run_records if r["mode"] == row["mode"]]
        summary = mode_summary(mine)
        rows[name] = {"successes": summary["successes"], "trials": summary["trials"],
                      "success_ci": list(wilson_interval(summary["successes"], summary["trials"])),
                      "latency_mean_ms": summary["latency_ms"]["mean"],
                      "main_forwards_per_chunk": summary["main_forwards_per_chunk"],
                      "acceptance_by_depth": summary["acceptance_by_depth"], "records": mine}
    reference = rows.get("ar_exit")
    for name, row in rows.items():
        if reference is not None and name not in BASELINES:
            pairs = pair_by_episode(reference["records"] + row["records"], row["records"][0]["mode"], "ar_exit") \
                if row["records"] else []
            boot = bootstrap_latency_ratio([s.get("chunk_latency_ms") or [] for _, s in pairs],
                                           [f.get("chunk_latency_ms") or [] for f, _ in pairs])
            row["speedup_vs_ar_exit"] = {"ratio": boot["mean"]["ratio"], "ci": [boot["mean"]["low"],
                                                                                boot["mean"]["high"]],
                                         "episodes": boot["episodes"]}
        layer2 = next((d for d in row["acceptance_by_depth"] if d["depth"] == 2), None)
        row["layer2_acceptance"] = layer2["rate"] if layer2 else math.nan
    if "l1" in rows and "ar" in rows:
        pairs = pair_by_episode(rows["ar"]["records"] + rows["l1"]["records"], "ar", "l1")
        test = paired_success_test([r["status"] == "success" and bool(r["success"]) for r, _ in pairs],
                                   [r["status"] == "success" and bool(r["success"]) for _, r in pairs])
        rows["ar"]["vs_l1"] = test
    for row in rows.values():
        row.pop("records")
    return {"episodes_per_row": (sweep.get("episodes") or {}).get("per_row"), "modes": rows}


def multimodal_figures(run_dir: Path) -> dict[str, Any]:
    """Per p_a: the data's share of mode A and, per sampled decoding, A / B / between shares."""
    out = {}
    for p in P_VALUES:
        result = _load_json(run_dir / f"multimodal_offline_p{p:g}.json")
        if result is not None:
            out[f"{p:g}"] = {"data_a": result["data"]["A"],
                             **{mode: result["modes"][mode] for mode in SAMPLED if mode in result["modes"]}}
    return out


def collect(runs: Path, registry: Path) -> list[dict[str, Any]]:
    names = sorted({p.name for p in runs.iterdir() if p.is_dir()} | ({p.name for p in registry.iterdir()
                                                                        if p.is_dir()} if registry.is_dir() else set()))
    layouts = []
    for name in names:
        row = {"name": name, **training_figures(registry / name), **sweep_figures(runs / name / "sweep"),
               "multimodal": multimodal_figures(runs / name)}
        budget = _load_json(runs / name / "budget.json")
        if budget is not None:
            row["ceiling"] = budget.get("ceiling")
            row["budget_exact_layer_2"] = {p: budget["layers"]["layer 2"][p]["exact_rate"]
                                           for p in ("draft", "parallel")} if "layer 2" in budget["layers"] else {}
        if "layout" in row or "modes" in row:
            layouts.append(row)
    return layouts


# ---- text ------------------------------------------------------------------------------------------------


def _num(value: Any, spec: str = ".3f") -> str:
    return format(value, spec) if _finite(value) else "-"


def _success(row: dict[str, Any] | None) -> str:
    if not row or not row["trials"]:
        return "-"
    low, high = row["success_ci"]
    return f"{row['successes']}/{row['trials']} ({100 * low:.0f}-{100 * high:.0f}%)"


def _variants(layouts: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(name for lay in layouts for name in lay.get("modes", {}) if name not in BASELINES))


def markdown(layouts: list[dict[str, Any]]) -> str:
    variants = _variants(layouts)
    lines = ["# Token layouts compared", "",
             "The quickstart's demos, recipes, time budgets and evaluation episodes for every layout "
             "(`bash scripts/layouts.sh`). Success: successes/episodes (Wilson 95% interval). Speedup: mean chunk "
             "latency of `ar_exit` / the variant's on the paired episodes of the same run (bootstrap 95% interval).",
             "", "## Tokens and training", "",
             "| layout | tokens x codes per layer | tokenizer MAE depth 1 / 2 / last | main token acc layer 1 / 2 "
             "(majority) | draft agreement layer 2 | val L1: ar / regression |", "|---|---|---|---|---|---|"]
    for lay in layouts:
        info = lay.get("layout", {})
        mae, acc, maj = lay.get("tokenizer_mae", []), lay.get("token_acc", []), lay.get("majority", [])
        lines.append(
            f"| **{lay['name']}**: {info.get('describe', '-')}, L {info.get('num_layers', '-')} | "
            f"{info.get('tokens_per_layer', '-')} x {info.get('vocab_size', '-')} | "
            f"{' / '.join(_num(v, '.4f') for v in (mae[:2] + mae[-1:]) if mae) or '-'} | "
            + (f"{_num(acc[0])} ({_num(maj[0])}) / {_num(acc[1])} ({_num(maj[1])})" if len(acc) > 1 else "-")
            + f" | {_num(lay.get('draft_agreement_layer_2'))} | {_num(lay.get('l1_ar'), '.4f')} / "
              f"{_num(lay.get('l1_regression'), '.4f')} |")
    lines += ["", "## Success", "", "| layout | " + " | ".join(BASELINES + tuple(variants)) + " | ar vs l1 |",
              "|---" * (len(BASELINES) + len(variants) + 2) + "|"]
    for lay in layouts:
        modes = lay.get("modes", {})
        versus = (modes.get("ar") or {}).get("vs_l1")
        verdict = f"{versus['difference']:+.0%} ({versus['verdict']})" if versus else "-"
        lines.append(f"| {lay['name']} | " + " | ".join(_success(modes.get(m)) for m in BASELINES + tuple(variants))
                     + f" | {verdict} |")
    lines += ["", "## Speed over ar_exit, acceptance of layer 2, and the ceiling", "",
              "| layout | ar_exit ms/chunk (main fwd) | " + " | ".join(variants)
              + " | ceiling: draft / parallel head |", "|---" * (len(variants) + 3) + "|"]
    for lay in layouts:
        modes, top = lay.get("modes", {}), lay.get("ceiling") or {}
        exit_row = modes.get("ar_exit") or {}
        cells = []
        for name in variants:
            row = modes.get(name) or {}
            speed = row.get("speedup_vs_ar_exit") or {}
            ceiling_value = (top.get("parallel" if name.startswith("self") else "draft") or {}).get("speedup")
            fraction = f", {speed['ratio'] / ceiling_value:.0%} of ceiling" if _finite(speed.get("ratio")) and \
                _finite(ceiling_value) and "lossless" in name else ""
            cells.append(f"{_num(speed.get('ratio'), '.2f')}x [{_num((speed.get('ci') or [None])[0], '.2f')}-"
                         f"{_num((speed.get('ci') or [None, None])[1], '.2f')}], L2 acc "
                         f"{_num(row.get('layer2_acceptance'), '.0%')}{fraction}" if row else "-")
        ceiling_text = (f"{_num((top.get('draft') or {}).get('speedup'), '.2f')}x / "
                        f"{_num((top.get('parallel') or {}).get('speedup'), '.2f')}x (exit depth "
                        f"{_num(top.get('exit_depth_mean'), '.2f')})") if top else "-"
        lines.append(f"| {lay['name']} | {_num(exit_row.get('latency_mean_ms'), '.1f')} "
                     f"({_num(exit_row.get('main_forwards_per_chunk'), '.2f')}) | " + " | ".join(cells)
                     + f" | {ceiling_text} |")
    lines += ["", "## Multimodality (multimodal-offline)", "",
              "Share of sampled chunks on mode A / mode B / neither; the criterion: >= 90% on a mode and A's share "
              "within 10 points of the data's.", "",
              "| layout | p_a | data A | ar sampled | speculative sampled | criterion met |",
              "|---|---|---|---|---|---|"]
    for lay in layouts:
        for p, entry in lay.get("multimodal", {}).items():
            cells = [f"{entry[m]['A']:.0%} / {entry[m]['B']:.0%} / {entry[m]['between']:.0%}" if m in entry else "-"
                     for m in SAMPLED]
            met = all(on_one_mode(entry[m], entry["data_a"]) for m in SAMPLED if m in entry)
            lines.append(f"| {lay['name']} | {p} | {entry['data_a']:.0%} | {cells[0]} | {cells[1]} | "
                         f"{'yes' if met else 'no'} |")
    lines += ["", "![success, speedup over ar_exit and coherence per layout](layouts.png)"]
    return "\n".join(lines) + "\n"


# ---- figure -----------------------------------------------------------------------------------------------


def figure(layouts: list[dict[str, Any]]):
    """Three panels over the layouts: success per mode (Wilson bars), speedup over ar_exit per speculative
    variant (bootstrap bars, ceiling marks), and the share of sampled chunks on a mode."""
    from matplotlib.figure import Figure

    names = [lay["name"] for lay in layouts]
    variants = _variants(layouts)
    fig = Figure(figsize=(max(8.0, 1.9 * len(names) + 3), 11.0), layout="constrained")
    success_ax, speed_ax, mode_ax = fig.subplots(3, 1)
    shown = BASELINES[:1] + BASELINES[2:] + tuple(variants)
    width = 0.8 / max(1, len(shown))
    for j, mode in enumerate(shown):
        xs, ys, low, high = [], [], [], []
        for i, lay in enumerate(layouts):
            row = lay.get("modes", {}).get(mode)
            if row and row["trials"]:
                rate = row["successes"] / row["trials"]
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(100 * rate)
                low.append(100 * (rate - row["success_ci"][0]))
                high.append(100 * (row["success_ci"][1] - rate))
        success_ax.errorbar(xs, ys, yerr=[low, high], fmt="o", capsize=3, label=mode)
    success_ax.set_ylabel("success (%)")
    success_ax.set_ylim(-3, 103)
    success_ax.legend(fontsize=8, ncols=min(4, len(shown)), loc="lower left")
    width = 0.8 / max(1, len(variants))
    for j, name in enumerate(variants):
        xs, ys, low, high = [], [], [], []
        for i, lay in enumerate(layouts):
            speed = ((lay.get("modes", {}).get(name) or {}).get("speedup_vs_ar_exit") or {})
            if _finite(speed.get("ratio")):
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(speed["ratio"])
                low.append(speed["ratio"] - speed["ci"][0] if _finite(speed["ci"][0]) else 0)
                high.append(speed["ci"][1] - speed["ratio"] if _finite(speed["ci"][1]) else 0)
        speed_ax.errorbar(xs, ys, yerr=[low, high], fmt="s", capsize=3, label=name)
    for i, lay in enumerate(layouts):
        for proposer, marker in (("draft", "_"), ("parallel", "x")):
            value = ((lay.get("ceiling") or {}).get(proposer) or {}).get("speedup")
            if _finite(value):
                speed_ax.plot([i], [value], marker=marker, color="black", markersize=14,
                              label=f"ceiling ({proposer})" if i == 0 else None)
    speed_ax.axhline(1.0, color="grey", linewidth=0.8)
    speed_ax.axhline(1.15, color="grey", linewidth=0.8, linestyle=":")
    speed_ax.set_ylabel("speedup over ar_exit")
    speed_ax.legend(fontsize=8, ncols=3)
    for j, (p, mode) in enumerate((p, m) for p in P_VALUES for m in SAMPLED):
        xs, ys = [], []
        for i, lay in enumerate(layouts):
            entry = lay.get("multimodal", {}).get(f"{p:g}", {})
            if mode in entry:
                xs.append(i - 0.3 + 0.2 * j)
                ys.append(100 * (entry[mode]["A"] + entry[mode]["B"]))
        mode_ax.bar(xs, ys, width=0.18, label=f"{mode}, p_a {p:g}")
    mode_ax.axhline(90, color="grey", linewidth=0.8, linestyle=":")
    mode_ax.set_ylabel("sampled chunks on a mode (%)")
    mode_ax.set_ylim(0, 105)
    mode_ax.legend(fontsize=8, ncols=2, loc="lower left")
    for ax in (success_ax, speed_ax, mode_ax):
        ax.set_xticks(range(len(names)), names)
        ax.set_xlim(-0.6, len(names) - 0.4)
    fig.suptitle("Token layouts on the quickstart: success, speed over ar_exit, multimodal coherence", fontsize=11)
    return fig


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m rsd_pl layouts", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="runs/layouts", help="folder of scripts/layouts.sh's per-layout runs")
    parser.add_argument("--registry", default="checkpoints/layouts", help="folder of the per-layout registries")
    args = parser.parse_args(argv)
    runs, registry = Path(args.runs), Path(args.registry)
    if not runs.is_dir():
        raise RsdError(f"--runs {runs}: no such folder; run `bash scripts/layouts.sh` first")
    layouts = collect(runs, registry)
    if not layouts:
        raise RsdError(f"no layout results under {runs} / {registry}; run `bash scripts/layouts.sh` first")
    from rsd_pl.eval.plots import DPI

    atomic_write(runs / "layouts.json", json.dumps(_json_safe(layouts), indent=2))
    text = markdown(layouts)
    atomic_write(runs / "layouts.md", text)
    with atomic_file(runs / "layouts.png") as handle:
        figure(layouts).savefig(handle, dpi=DPI, format="png")
    print(text + f"\nwritten: {runs / 'layouts.md'}, {runs / 'layouts.json'}, {runs / 'layouts.png'}")
    return 0
