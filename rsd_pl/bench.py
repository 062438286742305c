"""`python -m rsd_pl bench`: latency per chunk of every decoding mode, measured in one run.

For each setting (tiny presets on CPU with random weights; a Llama-2-7B-shaped random bf16
backbone when CUDA is available; the native OpenVLA-OFT network from a checkpoint directory or at its
real size with random weights (`--openvla`); or trained models from the registry) the modes are run
round-robin on the same observations, so machine noise hits all of them alike. Reports p50 / p95
latency, main and draft forwards per chunk, acceptance, peak GPU memory, and the speedup of
speculative over ar and over ar_exit (the strongest AR baseline). `--forward_costs N` adds `budget`'s forward
costs on the same models (rsd_pl/eval/budget.py) and what follows from them: the break-even acceptance of a proposed
layer and the ceiling of speculation over ar_exit per exit depth.
"""

from __future__ import annotations

import argparse
import json
import resource
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.decoding import MODES, RSD_MODES, DecodingConfig, DecodingEngine, OFTEngine, StatsAggregator
from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import TINY_PRESETS, BackboneConfig
from rsd_pl.models.draft import DraftConfig, DraftModel
from rsd_pl.models.main_model import MainModel, MainModelConfig
from rsd_pl.models.rfsq import ActionRFSQAE

# Llama-2-7B language dims (OpenVLA's LLM) and a ViT-L-sized vision tower at 224 px / patch 14.
SCALE_7B = dict(vision_hidden=1024, vision_layers=24, vision_heads=16, vision_mlp=4096,
                hidden=4096, layers=32, heads=32, kv_heads=32, mlp=11008)
INSTRUCTIONS = ["pick up the black bowl next to the plate and place it on the plate",
                "pick up the black bowl on the stove and place it on the plate"]


@dataclass
class BenchSetting:
    name: str
    main: MainModel
    draft: DraftModel
    tokenizer: ActionRFSQAE
    normalizer: ActionNormalizer
    weights: str
    """'random' or the registry specs / checkpoint the models came from."""
    notes: list[str] = field(default_factory=list)
    oft: object | None = None
    """OpenVLA-OFT's own policy (OFTPolicyModel) for the `oft` mode; only with --openvla."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m rsd_pl bench", description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=list(TINY_PRESETS),
                        help="tiny presets to build with random weights (default: all); none with --main")
    parser.add_argument("--modes", nargs="+", default=list(RSD_MODES), choices=MODES,
                        help="decoding modes (oft needs --openvla)")
    parser.add_argument("--chunks", type=int, default=30, help="timed chunks per mode")
    parser.add_argument("--warmup", type=int, default=3, help="untimed chunks per mode first")
    parser.add_argument("--draft_len", type=int, nargs="+", default=[7],
                        help="layers proposed per round; several values = k per round, the last repeating")
    parser.add_argument("--acceptance", default="exact", choices=["exact", "sampling", "relaxed"],
                        help="speculative acceptance rule (sampling needs --temperature > 0)")
    parser.add_argument("--tau", type=float, default=0.05, help="relaxed: max action gap, normalised units")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--scale_7b", choices=["auto", "on", "off"], default="auto",
                        help="Llama-2-7B-shaped random bf16 backbone on CUDA (auto: when CUDA is available)")
    parser.add_argument("--openvla", default=None, metavar="DIR|random",
                        help="the native OpenVLA-OFT: a local checkpoint directory, or 'random' (its real 7B "
                             "architecture, random bf16 weights, CUDA); RSD heads and draft are random")
    parser.add_argument("--dtype", choices=["auto", "bfloat16", "float32"], default="auto",
                        help="--openvla: the network's dtype (auto: bfloat16 on CUDA, float32 on CPU; bfloat16 on a "
                             "CPU runs the GPU's dtype path in a dry run)")
    parser.add_argument("--exit_bound", type=float, default=0.05, help="ar_exit: early-exit bound (normalised)")
    parser.add_argument("--main", default=None, help="registry spec of a trained main model (e.g. main@best)")
    parser.add_argument("--draft", default=None, help="registry spec of its draft (e.g. draft@best)")
    parser.add_argument("--tokenizer", default=None, help="registry spec (default: the main model's lineage)")
    parser.add_argument("--registry", "--registry_root", dest="registry", default="checkpoints",
                        help="registry folder of --main / --draft (fit calls it --registry_root)")
    parser.add_argument("--forward_costs", type=int, default=0, metavar="N",
                        help="also time each forward as `budget` does (prefill, extend with 1 / 2 / L-1 blocks, "
                             "draft forward, parallel head) on N observations, with the break-even acceptance and "
                             "the ceiling over ar_exit per exit depth (0: not measured)")
    parser.add_argument("--out", default="runs/bench/decoding.json")
    args = parser.parse_args(argv)
    if args.chunks < 1 or args.warmup < 0 or args.forward_costs < 0:
        raise RsdError(f"--chunks={args.chunks} must be >= 1, --warmup={args.warmup} and "
                       f"--forward_costs={args.forward_costs} >= 0")
    if "oft" in args.modes and args.openvla is None:
        raise RsdError("--modes oft needs --openvla (OpenVLA-OFT's own checkpoint, or random)")
    if args.openvla is not None and args.main is not None:
        raise RsdError("--openvla and --main are separate settings: give one")
    if (args.main is None) != (args.draft is None):
        raise RsdError("--main and --draft go together (speculative decoding needs both)")
    unknown = set(args.presets) - set(TINY_PRESETS)
    if unknown:
        raise RsdError(f"--presets: unknown {sorted(unknown)}; known: {sorted(TINY_PRESETS)}")
    return args


def identity_normalizer(action_dim: int = 7) -> ActionNormalizer:
    """q01 = -1, q99 = 1: un-normalisation is the identity (random weights have no data statistics)."""
    low, high = -np.ones(action_dim), np.ones(action_dim)
    return ActionNormalizer(q01=low, q99=high, mean=np.zeros(action_dim), std=np.ones(action_dim),
                            min=low, max=high)


def random_setting(preset: str, device: torch.device) -> BenchSetting:
    """The tiny preset as configs/main_tiny.yaml builds it, random init, float32."""
    torch.manual_seed(0)
    backbone = BackboneConfig(preset=preset, image_size=64, patch_size=8, image_pool=2, use_object_pos=True)
    main = MainModel(MainModelConfig(backbone=backbone)).to(device)
    draft = DraftModel(DraftConfig(main_hidden=main.hidden_size)).to(device)
    return BenchSetting(f"{preset} ({device.type}, fp32)", main, draft, ActionRFSQAE(), identity_normalizer(),
                        weights="random")


@contextmanager
def _build_on(device: torch.device, dtype: torch.dtype):
    """Create parameters directly on `device` in `dtype` (a 7B model never touches CPU memory)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(previous)


def scale_7b_setting(device: torch.device) -> BenchSetting:
    torch.manual_seed(0)
    backbone = BackboneConfig(preset="tiny-30m", image_size=224, patch_size=14, image_pool=1,
                              use_object_pos=False, extra=dict(SCALE_7B))
    with _build_on(device, torch.bfloat16):
        main = MainModel(MainModelConfig(backbone=backbone))
        draft = DraftModel(DraftConfig(main_hidden=main.hidden_size, hidden=512, layers=2, heads=8, mlp=2048))
    notes = [f"main: {sum(p.numel() for p in main.parameters()) / 1e9:.2f}B params, "
             f"draft: {sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M params"]
    return BenchSetting("llama2-7b-shaped (cuda, bf16)", main, draft, ActionRFSQAE().to(device),
                        identity_normalizer(), weights="random", notes=notes)


def openvla_setting(source: str, device: torch.device, dtype_name: str = "auto") -> BenchSetting:
    """The native OpenVLA-OFT (checkpoint directory or 'random' 7B) with random RSD heads and a 512-wide draft,
    no LoRA (as merged for deployment); `oft` runs OFT's own head on the same network (one copy of the weights).
    `dtype_name` auto: bf16 on CUDA, float32 on CPU."""
    from rsd_pl.models.openvla.backbone import OpenVLABackbone
    from rsd_pl.models.openvla.parts import load_openvla_parts, random_openvla_parts

    if dtype_name == "auto":
        dtype_name = "bfloat16" if device.type == "cuda" else "float32"
    dtype = getattr(torch, dtype_name)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    parts = random_openvla_parts(device, dtype) if source == "random" else load_openvla_parts(source, dtype)
    parts.vla.to(device)
    backbone_cfg = BackboneConfig(kind="openvla", path=None if source == "random" else source, image_size=224,
                                  num_cameras=2, max_text_len=64, lora_rank=0, torch_dtype=str(dtype).split(".")[1])
    cfg = MainModelConfig(backbone=backbone_cfg)
    backbone = OpenVLABackbone(backbone_cfg, dtype, cfg.layout.positions, parts, query_len=cfg.chunk_len)
    main = MainModel(cfg, backbone=backbone).to(device, dtype)
    hidden = main.hidden_size
    draft_size = dict(hidden=512, layers=2, heads=8, mlp=2048) if hidden >= 1024 else {}
    draft = DraftModel(DraftConfig(main_hidden=hidden, **draft_size)).to(device, dtype)
    oft = parts.oft_policy().to(device)
    notes = [f"OpenVLA network: {sum(p.numel() for p in parts.vla.parameters()) / 1e9:.2f}B params "
             f"({parts.source}); RSD heads and draft ({sum(p.numel() for p in draft.parameters()) / 1e6:.1f}M) "
             "random; no LoRA (merged)"]
    weights = "random" if source == "random" else f"{source} (OFT weights; RSD heads random)"
    return BenchSetting(f"openvla ({device.type}, {str(dtype).split('.')[1]})", main, draft,
                        ActionRFSQAE().to(device), identity_normalizer(), weights=weights, notes=notes, oft=oft)


def registry_setting(args: argparse.Namespace, device: torch.device) -> BenchSetting:
    from rsd_pl.models.draft import load_draft
    from rsd_pl.models.main_model import load_main
    from rsd_pl.models.rfsq import load_tokenizer
    from rsd_pl.registry import Registry

    registry = Registry(args.registry)
    main, main_art = load_main(args.main, registry)
    draft, draft_art = load_draft(args.draft, registry, main_spec=main_art.spec)
    tokenizer_spec = args.tokenizer or main_art.lineage.get("tokenizer")
    if tokenizer_spec is None:
        raise RsdError(f"{main_art.spec}: lineage names no tokenizer; pass --tokenizer")
    tokenizer, normalizer, _ = load_tokenizer(tokenizer_spec, registry)
    specs = f"{main_art.spec}, {draft_art.spec}, {tokenizer_spec}"
    return BenchSetting(f"registry ({device.type})", main.to(device), draft.to(device), tokenizer, normalizer,
                        weights=specs)


def observation_batches(main: MainModel, count: int, device: torch.device) -> list[dict]:
    """`count` random model batches (docs/contracts.md) of one observation shaped for `main`."""
    cfg = main.cfg.backbone
    generator = torch.Generator().manual_seed(0)
    batches = []
    for i in range(count):
        side = cfg.image_size
        batch = {
            "images": torch.rand(1, cfg.num_cameras, 3, side, side, generator=generator).to(device),
            "proprio": torch.randn(1, cfg.proprio_dim, generator=generator).to(device),
            "instruction": [INSTRUCTIONS[i % len(INSTRUCTIONS)]],
        }
        if cfg.use_object_pos:
            batch["object_pos"] = torch.randn(1, cfg.object_pos_dim, generator=generator).to(device)
        batches.append(batch)
    return batches


def decoding_config(args: argparse.Namespace, mode: str) -> DecodingConfig:
    """The bench's decoding flags for one mode (the acceptance rule only matters for speculative)."""
    acceptance = args.acceptance if mode == "speculative" else ("sampling" if args.temperature > 0 else "exact")
    draft_len = args.draft_len[0] if len(args.draft_len) == 1 else list(args.draft_len)
    return DecodingConfig(mode=mode, acceptance=acceptance, draft_len=draft_len, tau=args.tau,
                          temperature=args.temperature, exit_bound=args.exit_bound)


def run_setting(setting: BenchSetting, args: argparse.Namespace) -> dict:
    """Round-robin over modes: warmup chunks, then `args.chunks` timed chunks per mode."""
    engines = {
        mode: OFTEngine(setting.oft, decoding_config(args, mode)) if mode == "oft" else
        DecodingEngine(setting.main, setting.tokenizer, setting.normalizer, decoding_config(args, mode),
                       setting.draft if mode == "speculative" else None)
        for mode in args.modes
    }
    device = next(setting.main.parameters()).device
    batches = observation_batches(setting.main, 4, device)
    aggregators = {mode: StatsAggregator() for mode in args.modes}
    for step in range(args.warmup + args.chunks):
        batch = batches[step % len(batches)]
        for mode, engine in engines.items():
            stats = engine.decode_chunk(batch).stats
            if step >= args.warmup:
                aggregators[mode].add(stats)
    summaries = {mode: agg.summary() for mode, agg in aggregators.items()}
    result = {"setting": setting.name, "weights": setting.weights, "device": str(device),
              "decoding": decoding_config(args, "speculative").to_dict(),
              "threads": torch.get_num_threads(), "notes": setting.notes, "modes": summaries}
    for base in ("ar", "ar_exit"):
        if base in summaries and "speculative" in summaries:
            slow, spec = summaries[base], summaries["speculative"]
            result[f"speedup_speculative_over_{base}_p50"] = slow["latency_p50_ms"] / spec["latency_p50_ms"]
            result[f"speedup_speculative_over_{base}_mean"] = slow["latency_mean_ms"] / spec["latency_mean_ms"]
    if args.forward_costs:
        result["forward_costs"] = forward_costs(setting, args.forward_costs)
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result["peak_host_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return result


def forward_costs(setting: BenchSetting, observations: int) -> dict:
    """`budget`'s forward costs (p50 ms over `observations` random observations) on the setting's models, and what
    follows from them: the break-even acceptance of a proposed layer, and the ceiling of speculation over ar_exit
    (every proposal accepted) at each exit depth D = 2..L. Per depth, because the exit depth of random weights
    means nothing; the best possible speedup is the largest of them."""
    from rsd_pl.eval import budget

    main, device = setting.main, next(setting.main.parameters()).device
    clock = budget.Clock(torch.cuda.synchronize if device.type == "cuda" else None)
    for batch in observation_batches(main, observations, device):
        budget.measure(main, setting.draft, setting.tokenizer, batch, 0.0, clock)
    costs = clock.p50_ms()
    costs.pop("draft_prefix", None)  # the draft fed several blocks at once: not a per-layer cost (as budget)
    num_layers = main.num_layers
    by_depth = {str(depth): {p: budget.ar_exit_cost(costs, depth) / budget.perfect_round_cost(costs, depth, p,
                                                                                                num_layers)
                             for p in budget.PROPOSERS}
                for depth in range(2, num_layers + 1)}
    return {"observations": observations, "costs_ms_p50": costs,
            "break_even_acceptance": budget.break_even_acceptance(costs),
            "ceiling_over_ar_exit_by_exit_depth": by_depth,
            "ceiling_best": {p: max(c[p] for c in by_depth.values()) for p in budget.PROPOSERS}}


def format_result(result: dict) -> str:
    spec = result["decoding"]
    lines = [f"== {result['setting']}  weights: {result['weights']}  threads: {result['threads']}",
             f"   speculative: acceptance={spec['acceptance']} k={spec['draft_len']} tau={spec['tau']} "
             f"temperature={spec['temperature']}"]
    lines += [f"   {note}" for note in result["notes"]]
    lines.append(f"   {'mode':<12}{'p50 ms':>9}{'p95 ms':>9}{'main fw':>9}{'draft fw':>9}{'accept':>8}"
                 f"{'agree':>7}{'prefill':>9}{'draft':>8}{'verify':>8}{'decode':>8}")
    for mode, s in result["modes"].items():
        accept = "-" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.2f}"
        agree = "-" if s["code_agreement"] is None else f"{s['code_agreement']:.2f}"
        lines.append(f"   {mode:<12}{s['latency_p50_ms']:>9.2f}{s['latency_p95_ms']:>9.2f}"
                     f"{s['main_forwards_per_chunk']:>9.2f}{s['draft_forwards_per_chunk']:>9.2f}{accept:>8}{agree:>7}"
                     f"{s['prefill_mean_ms']:>9.2f}{s['draft_mean_ms']:>8.2f}{s['verify_mean_ms']:>8.2f}"
                     f"{s['decode_mean_ms']:>8.2f}")
    for base in ("ar", "ar_exit"):
        if f"speedup_speculative_over_{base}_p50" in result:
            lines.append(f"   speculative vs {base}: {result[f'speedup_speculative_over_{base}_p50']:.2f}x (p50), "
                         f"{result[f'speedup_speculative_over_{base}_mean']:.2f}x (mean)")
    if "peak_memory_gib" in result:
        lines.append(f"   peak GPU memory: {result['peak_memory_gib']:.1f} GiB")
    if "forward_costs" in result:
        lines += format_forward_costs(result["forward_costs"])
    if "random" in result["weights"]:
        spec = result["modes"].get("speculative", {})
        rate = spec.get("acceptance_rate")
        if rate is not None and rate >= 0.999:
            case = "every proposal passed (relaxed with a huge tau): speculative's best case"
        elif rate is not None and rate <= 0.001:
            case = "an untrained draft is ~never right, so speculative pays L main forwards + the draft: its worst case"
        else:
            case = "an untrained draft's acceptance means nothing"
        lines.append(f"   RANDOM WEIGHTS: latencies are real, acceptance is not ({case}).")
    return "\n".join(lines)


def format_forward_costs(costs: dict) -> list[str]:
    ceiling = costs["ceiling_over_ar_exit_by_exit_depth"]
    return [f"   forward costs, p50 ms over {costs['observations']} observations: "
            + ", ".join(f"{name} {ms:.2f}" for name, ms in costs["costs_ms_p50"].items()),
            "   break-even acceptance of a proposed layer: "
            + ", ".join(f"{name} {rate:.1%}" for name, rate in costs["break_even_acceptance"].items()),
            "   ceiling over ar_exit (every proposal accepted), draft / parallel head, by exit depth: "
            + ", ".join(f"{depth}: {c['draft']:.2f}x / {c['parallel']:.2f}x" for depth, c in ceiling.items())]


def settings_to_run(args: argparse.Namespace) -> list[tuple[str, Callable[[], BenchSetting]]]:
    """(name, builder) pairs; builders run one at a time so only one setting is in memory."""
    cuda = torch.cuda.is_available()
    if args.openvla is not None:
        if args.openvla == "random" and not cuda:
            raise RsdError("--openvla random builds the 7B network with random weights and needs CUDA")
        device = torch.device("cuda" if cuda else "cpu")
        return [("openvla", lambda: openvla_setting(args.openvla, device, args.dtype))]
    if args.main is not None:
        device = torch.device("cuda" if cuda else "cpu")
        return [("registry", lambda: registry_setting(args, device))]
    todo: list[tuple[str, Callable[[], BenchSetting]]] = [
        (preset, lambda p=preset: random_setting(p, torch.device("cpu"))) for preset in args.presets
    ]
    if args.scale_7b == "on" and not cuda:
        raise RsdError("--scale_7b on needs CUDA, and torch.cuda.is_available() is False")
    if args.scale_7b != "off" and cuda:
        todo.append(("llama2-7b", lambda: scale_7b_setting(torch.device("cuda"))))
    return todo


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    results = []
    for name, build in settings_to_run(args):
        print(f"building {name} ...", flush=True)
        result = run_setting(build(), args)
        print(format_result(result), flush=True)
        results.append(result)
    if args.main is None and args.openvla is None and not torch.cuda.is_available():
        print("llama2-7b-shaped setting skipped: CUDA is not available on this machine")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"config": vars(args), "torch": torch.__version__, "results": results}
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)
    print(f"wrote {out}")
    return 0
