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
  p* = (proposal + extend(2 blocks) - extend(1 block)) / extend(1 block).
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
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--out", default="runs/budget/budget.json")
    args = parser.parse_args(argv)
    if args.observations < 1 or args.tau < 0 or args.threads < 1:
        raise RsdError(f"--observations={args.observations} and --threads={args.threads} must be >= 1, "
                       f"--tau={args.tau} >= 0")
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
    """p50 wall time per named call."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def __call__(self, name: str, fn: Callable[[], object]) -> object:
        start = time.perf_counter()
        out = fn()
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


def summarise(rows: list[dict], costs: dict[str, float], tau: float, num_layers: int) -> dict:
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
    step = costs["extend_2"] - costs["extend_1"]
    break_even = {name: (costs[proposal] + step) / costs["extend_1"]
                  for name, proposal in (("draft", "draft_forward"), ("parallel", "parallel_head"))}
    return {"observations": len(rows), "tau": tau, "costs_ms_p50": costs, "layers": layers,
            "truncation": truncation, "break_even_acceptance": break_even}


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
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    main_model, draft, tokenizer, batches = load(args)
    clock, rows = Clock(), []
    for batch in tqdm(batches, desc="budget", unit="obs"):
        rows.append(measure(main_model, draft, tokenizer, batch, args.tau, clock))
    costs = clock.p50_ms()
    costs.pop("draft_prefix", None)  # the draft fed several blocks at once: not a per-layer cost
    summary = summarise(rows, costs, args.tau, main_model.num_layers)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, json.dumps(summary, indent=2))
    text = markdown(summary)
    atomic_write(out.with_suffix(".md"), text)
    print(text + f"\nwritten: {out} and {out.with_suffix('.md')}")
    return 0
