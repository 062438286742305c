"""`python -m rsd_pl budget`: where a speculative round can save time, measured on trained models and real
observations (held-out demo frames), without a simulator.

Per observation (batch 1), against greedy `ar`'s own codes:
- the cost of each forward (prefill, main extend with 1 / 2 / L-1 blocks, one draft forward, the parallel head,
  one tokenizer decode), p50 over the observations, all in this one process;
- how far each layer moves the action (|decode(layers <= l) - decode(layers < l)|, max abs) and how far ar
  stopped at depth D is from all L layers;
- how well each proposer guesses layer l given ar's lower layers: the draft model and the main model's parallel
  head (all T x d codes equal = what `exact` accepts; action gap <= tau = what `relaxed` accepts; either of the
  two = what a two-candidate verify would accept);
- the break-even acceptance: a round that proposes layer m+1 saves one main extend when the proposal is accepted
  and costs the proposal plus a verify one block longer, so it pays only above
  p* = (proposal + extend(2 blocks) - extend(1 block)) / extend(1 block);
- the ceiling: the speedup over `ar_exit` (at --exit_bound) that speculation with early exit would reach if every
  proposal were accepted, per proposer. ar_exit stopping after D layers costs prefill + (D-1) extends + D-1 stop
  checks; perfect speculation reaches D in one round: prefill + proposals of layers 2..D-1 + one verify of D-1
  blocks (its last prediction is the bonus layer D) + its stop checks (`perfect_round_cost`). Extends of k blocks
  are interpolated between the measured 1, 2 and L-1 blocks.
Hand-written: no library measures this. Observations are demo frames (open loop), not rollout frames.

Imports: eval.session (models as eval loads them), lit.vla_data (observations from the demos); no LIBERO.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from rsd_pl.durable import atomic_write
from rsd_pl.errors import RsdError

PROPOSERS = ("draft", "parallel")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rsd_pl budget", description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="checkpoints", help="registry folder of --main / --draft")
    parser.add_argument("--main", default="main@best", help="registry spec of the main model")
    parser.add_argument("--draft", default="draft@best", help="registry spec of its draft")
    parser.add_argument("--data", required=True, help="LIBERO-format HDF5 demos (file, folder or glob); the "
                        "validation episodes of the main model's split are used")
    parser.add_argument("--observations", type=int, default=150, help="observations, spread over the val set")
    parser.add_argument("--tau", type=float, default=0.05, help="relaxed acceptance bound (normalised units)")
    parser.add_argument("--exit_bound", type=float, default=0.05,
                        help="ar_exit's bound (normalised units), for the ceiling: ar_exit stops once a layer "
                             "moves the action by less")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="runs/budget/budget.json")
    args = parser.parse_args(argv)
    if args.observations < 1 or args.tau < 0 or args.threads < 1 or args.exit_bound <= 0:
        raise RsdError(f"--observations={args.observations} and --threads={args.threads} must be >= 1, "
                       f"--tau={args.tau} >= 0, --exit_bound={args.exit_bound} > 0")
    return args


def load(args: argparse.Namespace) -> tuple[object, object, object, list[dict]]:
    """-> (main, draft, tokenizer, observation batches): the models as `eval` loads them (lineage checked), the
    observations from the demos' validation split, shaped as the main model was trained."""
    from rsd_pl.envs import CAMERAS
    from rsd_pl.eval.config import EvalConfig
    from rsd_pl.eval.session import EvalSession
    from rsd_pl.lit.vla_data import Collate, VLADataModule

    session = EvalSession.open(EvalConfig(registry=args.registry, main=args.main, draft=args.draft,
                                          modes=["speculative"], torch_threads=args.threads))
    models, spec = session.models, session.obs
    main = models["main"]
    data = VLADataModule(args.data, tokenizer=main_tokenizer_spec(args), registry_root=args.registry,
                         cameras=[CAMERAS[c][1] for c in spec.cameras], image_size=spec.image_size,
                         use_object_pos=spec.object_pos, chunk_len=main.chunk_len, image_pipeline=spec.image_pipeline)
    data.setup()
    dataset = data.val_set if len(data.val_set) else data.train_set
    collate = Collate(spec.image_size, spec.image_pipeline)
    picks = np.linspace(0, len(dataset) - 1, min(args.observations, len(dataset))).astype(int)
    keys = ("images", "proprio", "object_pos", "instruction")
    batches = [{k: v for k, v in collate([dataset[int(i)]]).items() if k in keys} for i in picks]
    return main.eval(), models["draft"].eval(), models["tokenizer"].eval(), batches


def main_tokenizer_spec(args: argparse.Namespace) -> str:
    """The tokenizer of the main model's lineage (the demos are tokenized with it)."""
    from rsd_pl.registry import Registry

    return Registry(args.registry).resolve(args.main).lineage["tokenizer"]


class Clock:
    """p50 wall time per named call. `synchronize` (e.g. torch.cuda.synchronize) runs before each clock read, so
    that asynchronous GPU work is charged to the call that launched it."""

    def __init__(self, synchronize: Callable[[], object] | None = None) -> None:
        self.times: dict[str, list[float]] = {}
        self.synchronize = synchronize

    def __call__(self, name: str, fn: Callable[[], object]) -> object:
        if self.synchronize is not None:
            self.synchronize()
        start = time.perf_counter()
        out = fn()
        if self.synchronize is not None:
            self.synchronize()
        self.times.setdefault(name, []).append(time.perf_counter() - start)
        return out

    def p50_ms(self) -> dict[str, float]:
        return {name: 1e3 * float(np.median(values)) for name, values in self.times.items()}


def max_gap(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max())


@torch.inference_mode()
def measure(main, draft, tokenizer, batch: dict, tau: float, clock: Clock) -> dict:
    """One observation: forward costs into `clock`; per-layer contributions and proposal quality returned."""
    num_layers, decode = main.num_layers, tokenizer.decode_codes
    prefill = clock("prefill", lambda: main.prefill(batch))
    codes = prefill.layer1_logits.argmax(-1).unsqueeze(-1)  # [1, T, d, 1]
    for m in range(1, num_layers):
        logits = clock("extend_1", lambda m=m, c=codes: main.extend(c[..., m - 1 : m], m, prefill.cache))
        codes = torch.cat([codes, logits[:, 0].argmax(-1).unsqueeze(-1)], dim=-1)
    for blocks in sorted({2, num_layers - 1}):
        fresh = main.prefill(batch)
        clock(f"extend_{blocks}", lambda b=blocks, c=fresh.cache: main.extend(codes[..., :b], 1, c))
    actions = [clock("decode", lambda m=m: decode(codes[..., :m])) for m in range(1, num_layers + 1)]
    parallel = clock("parallel_head", lambda: main.parallel_logits(prefill.query_hidden)).argmax(-1)  # [1, L, T, d]
    row = {"contribution": [max_gap(actions[m], actions[m - 1]) for m in range(1, num_layers)],
           "truncation": [max_gap(actions[m], actions[-1]) for m in range(num_layers)]}
    for name in PROPOSERS:
        row[name] = {"exact": [], "gap": [], "agreement": []}
    for m in range(1, num_layers):  # guesses of layer m+1 (index m) given ar's layers 1..m
        cache = draft.start(prefill.query_hidden)
        guess = {"draft": clock("draft_forward" if m == 1 else "draft_prefix",
                                lambda c=cache, m=m: draft.extend(codes[..., :m], 1, c))[:, -1].argmax(-1),
                 "parallel": parallel[:, m]}
        for name in PROPOSERS:
            g = guess[name]
            row[name]["exact"].append(bool(torch.equal(g, codes[..., m])))
            row[name]["agreement"].append(float((g == codes[..., m]).float().mean()))
            row[name]["gap"].append(max_gap(decode(torch.cat([codes[..., :m], g.unsqueeze(-1)], -1)), actions[m]))
    row["union_accepted"] = [min(row["draft"]["gap"][i], row["parallel"]["gap"][i]) <= tau
                             for i in range(num_layers - 1)]
    return row


def exit_depth(contribution: list[float], bound: float) -> int:
    """The depth ar_exit stops at: the first m >= 2 whose layer m moved the action by less than `bound`, else L
    (contribution[i] is layer i + 2's)."""
    return next((i + 2 for i, moved in enumerate(contribution) if moved < bound), len(contribution) + 1)


def extend_cost(costs: dict[str, float], blocks: int, num_layers: int) -> float:
    """ms of one main extend over `blocks` blocks: measured at 1, 2 and L-1 blocks, linear in between."""
    known = sorted({1: costs["extend_1"], 2: costs["extend_2"],
                    num_layers - 1: costs[f"extend_{num_layers - 1}"]}.items())
    xs, ys = zip(*known, strict=True)
    return float(np.interp(blocks, xs, ys))


def perfect_round_cost(costs: dict[str, float], depth: int, proposer: str, num_layers: int) -> float:
    """ms of speculation reaching `depth` layers in one round with every proposal accepted: the proposals of
    layers 2..D-1, one verify of blocks 1..D-1 whose last prediction is the bonus layer D, and the round's stop
    check plus one per proposal after the first (the draft stops at the first proposal that passes it). At
    D <= 2 nothing is worth proposing: the round is ar's single extend."""
    check = 2 * costs["decode"]  # a stop check decodes with and without the last layer
    proposals = max(depth - 2, 0)
    if proposer == "draft":
        propose = proposals * costs["draft_forward"]
    else:  # the parallel head's logits serve every layer: computed once, if anything is proposed
        propose = costs["parallel_head"] if proposals else 0.0
    verify = extend_cost(costs, min(max(depth - 1, 1), num_layers - 1), num_layers)
    return costs["prefill"] + propose + verify + check * (1 + max(proposals - 1, 0))


def ar_exit_cost(costs: dict[str, float], depth: int) -> float:
    """ms of ar_exit stopping after `depth` layers: prefill, depth - 1 extends, a stop check after each of layers
    2..D (a stop check decodes with and without the last layer)."""
    return costs["prefill"] + (depth - 1) * (costs["extend_1"] + 2 * costs["decode"])


def break_even_acceptance(costs: dict[str, float]) -> dict[str, float]:
    """Per proposer: the acceptance above which proposing a layer pays, (proposal + extend_2 - extend_1) /
    extend_1 (an accepted proposal saves one extend; every proposal costs itself and one more verify block)."""
    step = costs["extend_2"] - costs["extend_1"]
    return {name: (costs[proposal] + step) / costs["extend_1"]
            for name, proposal in (("draft", "draft_forward"), ("parallel", "parallel_head"))}


def ceiling(rows: list[dict], costs: dict[str, float], exit_bound: float, num_layers: int) -> dict:
    """Per proposer: mean ar_exit cost / mean cost of speculation with every proposal accepted (same exit depth)."""
    depths = [exit_depth(r["contribution"], exit_bound) for r in rows]
    ar_exit = [ar_exit_cost(costs, d) for d in depths]
    result = {"exit_bound": exit_bound, "exit_depth_mean": float(np.mean(depths)), "exit_depths": depths,
              "ar_exit_ms": float(np.mean(ar_exit))}
    for name in PROPOSERS:
        perfect = [perfect_round_cost(costs, d, name, num_layers) for d in depths]
        result[name] = {"perfect_ms": float(np.mean(perfect)), "speedup": float(np.mean(ar_exit) / np.mean(perfect))}
    return result


def summarise(rows: list[dict], costs: dict[str, float], tau: float, num_layers: int,
              exit_bound: float = 0.05) -> dict:
    def stat(values: list[float]) -> dict[str, float]:
        return {"p50": float(np.median(values)), "p95": float(np.percentile(values, 95))}

    layers = {}
    for i in range(num_layers - 1):  # layer i + 2
        entry = {"contribution": stat([r["contribution"][i] for r in rows])}
        for name in PROPOSERS:
            gaps = np.array([r[name]["gap"][i] for r in rows])
            entry[name] = {"exact_rate": float(np.mean([r[name]["exact"][i] for r in rows])),
                           "code_agreement": float(np.mean([r[name]["agreement"][i] for r in rows])),
                           "gap_p50": float(np.median(gaps)), "accepted_at_tau": float(np.mean(gaps <= tau))}
        entry["either_accepted_at_tau"] = float(np.mean([r["union_accepted"][i] for r in rows]))
        layers[f"layer {i + 2}"] = entry
    truncation = {f"depth {d + 1}": stat([r["truncation"][d] for r in rows]) for d in range(num_layers)}
    break_even = break_even_acceptance(costs)
    return {"observations": len(rows), "tau": tau, "costs_ms_p50": costs, "layers": layers,
            "truncation": truncation, "break_even_acceptance": break_even,
            "ceiling": ceiling(rows, costs, exit_bound, num_layers)}


def markdown(summary: dict) -> str:
    costs, tau = summary["costs_ms_p50"], summary["tau"]
    lines = [f"# Speculation budget ({summary['observations']} held-out demo observations, batch 1)", "",
             "Forward costs, p50 ms: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()), "",
             f"| layer | moves the action (p50 / p95) | draft: exact / code agreement / gap p50 / accepted at "
             f"tau {tau:g} | parallel head: same | either accepted |", "|---|---|---|---|---|"]
    for name, entry in summary["layers"].items():
        cells = [f"{entry[p]['exact_rate']:.0%} / {entry[p]['code_agreement']:.0%} / {entry[p]['gap_p50']:.4f} / "
                 f"{entry[p]['accepted_at_tau']:.0%}" for p in PROPOSERS]
        c = entry["contribution"]
        lines.append(f"| {name} | {c['p50']:.4f} / {c['p95']:.4f} | {cells[0]} | {cells[1]} | "
                     f"{entry['either_accepted_at_tau']:.0%} |")
    lines += ["", "ar stopped at depth D, max action deviation from all layers (p50 / p95): " + ", ".join(
        f"{d} {v['p50']:.4f} / {v['p95']:.4f}" for d, v in summary["truncation"].items()), "",
        "Break-even acceptance of a proposed layer (proposal + one more verify block vs one main extend): " +
        ", ".join(f"{k} {v:.0%}" for k, v in summary["break_even_acceptance"].items())]
    if "ceiling" in summary:
        top = summary["ceiling"]
        lines += ["", f"Ceiling over ar_exit (exit bound {top['exit_bound']:g}, mean exit depth "
                  f"{top['exit_depth_mean']:.2f}, ar_exit {top['ar_exit_ms']:.2f} ms): every proposal accepted, "
                  + ", ".join(f"{p} {top[p]['speedup']:.2f}x ({top[p]['perfect_ms']:.2f} ms)" for p in PROPOSERS)]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    main_model, draft, tokenizer, batches = load(args)
    clock, rows = Clock(), []
    for batch in tqdm(batches, desc="budget", unit="obs"):
        rows.append(measure(main_model, draft, tokenizer, batch, args.tau, clock))
    costs = clock.p50_ms()
    costs.pop("draft_prefix", None)  # the draft fed several blocks at once: not a per-layer cost
    summary = summarise(rows, costs, args.tau, main_model.num_layers, args.exit_bound)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(summary, indent=2))
    text = markdown(summary)
    atomic_write(out.with_suffix(".md"), text)
    print(text + f"\nwritten: {out} and {out.with_suffix('.md')}")
    return 0
