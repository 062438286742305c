"""`python -m rsd_pl budget`: per-layer information, proposal acceptance and forward costs on a tiny registry and
synthetic demos (no simulator); the numbers obey the identities that hold for any model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rsd_pl.eval import budget
from tests.stubs import single_thread, tiny_batch, tiny_draft, tiny_main, tiny_tokenizer  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def test_measure_obeys_its_identities() -> None:
    main = tiny_main(0)
    draft, tokenizer = tiny_draft(main, 0), tiny_tokenizer(main)
    clock = budget.Clock()
    rows = [budget.measure(main, draft, tokenizer, tiny_batch(seed, 1), tau, clock)
            for seed in range(3) for tau in (0.0, 1e9)]
    num_layers = main.num_layers
    for row in rows:
        assert len(row["contribution"]) == num_layers - 1 and min(row["contribution"]) >= 0
        assert row["truncation"][-1] == 0.0  # all layers vs all layers
        for name in budget.PROPOSERS:
            for exact, gap in zip(row[name]["exact"], row[name]["gap"], strict=True):
                assert gap >= 0 and (not exact or gap == 0.0)  # an exact guess decodes to ar's action
    tight = budget.summarise(rows[0::2], clock.p50_ms(), 0.0, num_layers)
    loose = budget.summarise(rows[1::2], clock.p50_ms(), 1e9, num_layers)
    assert set(tight["layers"]) == {f"layer {m}" for m in range(2, num_layers + 1)}
    for name, entry in loose["layers"].items():
        assert entry["either_accepted_at_tau"] == 1.0 and entry["draft"]["accepted_at_tau"] == 1.0
        tight_entry = tight["layers"][name]
        for proposer in budget.PROPOSERS:  # tau 0 accepts exactly the guesses that decode to ar's action
            assert tight_entry[proposer]["accepted_at_tau"] >= tight_entry[proposer]["exact_rate"]
    costs = tight["costs_ms_p50"]
    assert {"prefill", "extend_1", "extend_2", "extend_7", "draft_forward", "parallel_head", "decode"} <= set(costs)
    expected = (costs["draft_forward"] + costs["extend_2"] - costs["extend_1"]) / costs["extend_1"]
    assert tight["break_even_acceptance"]["draft"] == pytest.approx(expected)


def test_cli_on_a_registry_and_synthetic_demos(tmp_path, capsys) -> None:
    from rsd_pl.__main__ import main as cli
    from rsd_pl.data.normalize import ActionNormalizer
    from rsd_pl.data.synthetic import write_synthetic_demos
    from rsd_pl.models.backbone import BackboneConfig
    from rsd_pl.models.draft import DraftConfig, DraftModel
    from rsd_pl.models.main_model import MainModel, MainModelConfig
    from rsd_pl.models.rfsq import ActionRFSQAE
    from rsd_pl.registry import Registry

    torch.manual_seed(0)
    registry = Registry(tmp_path / "checkpoints")
    stats = {key: [-1.0] * 7 for key in ("min", "q01")} | {key: [1.0] * 7 for key in ("max", "q99", "std")}
    stats |= {"mean": [0.0] * 7, "mask": [True] * 6 + [False]}
    tok_cfg = {"hidden": 16, "num_hidden": 1}
    registry.export("rfsq", ActionRFSQAE(**tok_cfg).state_dict(), {"model": tok_cfg}, {}, {},
                    extra_json={"stats": ActionNormalizer.from_dict(stats).to_dict()})
    sizes = dict(vision_hidden=16, vision_layers=1, vision_heads=2, vision_mlp=32, hidden=32, layers=1, heads=2,
                 kv_heads=1, mlp=64)
    main_cfg = MainModelConfig(backbone=BackboneConfig(image_size=16, num_cameras=1, use_object_pos=True,
                                                       max_text_len=24, extra=sizes))
    main = MainModel(main_cfg)
    registry.export("main", main.export_tensors(), {"model": main_cfg.to_dict()}, {}, {"tokenizer": "rfsq@1"})
    draft_cfg = DraftConfig(main_hidden=main.hidden_size, hidden=16, layers=1, heads=2, mlp=32)
    registry.export("draft", DraftModel(draft_cfg).state_dict(), {"draft": draft_cfg.to_dict()}, {},
                    {"main": "main@1"})
    demos = write_synthetic_demos(tmp_path / "demos.hdf5", num_demos=4, image_size=32)
    out = tmp_path / "budget.json"
    assert cli(["budget", "--registry", str(tmp_path / "checkpoints"), "--main", "main@1", "--draft", "draft@1",
                "--data", str(demos), "--observations", "4", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["observations"] == 4 and len(summary["layers"]) == 7
    assert summary["truncation"]["depth 8"]["p50"] == 0.0
    assert np.isfinite(summary["break_even_acceptance"]["parallel"])
    assert "| layer 2 |" in out.with_suffix(".md").read_text() and "Break-even acceptance" in capsys.readouterr().out
    assert cli(["budget", "--data", str(demos), "--observations", "0"]) == 1


def test_the_ceiling_prices_perfect_speculation_against_ar_exit() -> None:
    """ar_exit stopping after D layers: prefill + (D-1) extends (+ stop checks); perfect speculation reaches D in one
    round: proposals of layers 2..D-1 + one verify of D-1 blocks, whose last prediction is the bonus layer D.
    Decodes cost 0 first so the arithmetic is visible."""
    assert budget.exit_depth([0.2, 0.01, 0.3], bound=0.05) == 3  # layer 3 moved the action by less than 0.05
    assert budget.exit_depth([0.2, 0.1, 0.3], bound=0.05) == 4  # never: all L = 4 layers
    costs = {"prefill": 10.0, "extend_1": 5.0, "extend_2": 6.0, "extend_3": 7.0, "decode": 0.0,
             "draft_forward": 1.0, "parallel_head": 0.5}
    assert budget.extend_cost(costs, 3, num_layers=4) == 7.0
    rows = [{"contribution": [0.2, 0.1, 0.3]}]  # D = 4
    top = budget.ceiling(rows, costs, exit_bound=0.05, num_layers=4)
    assert top["ar_exit_ms"] == 10 + 3 * 5
    assert top["draft"]["perfect_ms"] == 10 + 2 * 1.0 + 7  # layers 2, 3 proposed; blocks 1..3 verified; 4 the bonus
    assert top["parallel"]["perfect_ms"] == 10 + 0.5 + 7
    assert top["parallel"]["speedup"] == pytest.approx(25 / 17.5)
    assert budget.perfect_round_cost(costs, 2, "draft", 4) == 10 + 5  # nothing to propose: ar's one extend
    costs["decode"] = 1.0  # a stop check decodes twice: ar_exit checks after layers 2..4, speculation after the
    assert budget.ceiling(rows, costs, 0.05, 4)["ar_exit_ms"] == 25 + 3 * 2  # round and after its 2nd proposal
    assert budget.ceiling(rows, costs, 0.05, 4)["parallel"]["perfect_ms"] == 17.5 + 2 * 2
