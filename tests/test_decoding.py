"""Correctness proofs of the decoding engine on tiny real models (DESIGN.md section 5).

- speculative + exact == greedy ar, code for code, for many seeds, draft lengths and draft errors;
- forced accept / reject give 2 / 8 main forwards for 8 layers with k = 7;
- relaxed with tau = 0 gives the exact-mode actions; config and missing-draft errors.
The sampling-distribution proof is in tests/test_decoding_sampling.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rsd_pl.decoding import DecodingConfig, DecodingEngine, StatsAggregator
from rsd_pl.decoding.acceptance import RelaxedRule
from rsd_pl.errors import RsdError
from tests.stubs import (
    ScriptedDraft,
    single_thread,  # noqa: F401  (fixture)
    tiny_batch,
    tiny_draft,
    tiny_main,
    tiny_normalizer,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def make_engine(main, mode: str, draft=None, **config) -> DecodingEngine:
    return DecodingEngine(main, tiny_tokenizer(main), tiny_normalizer(), DecodingConfig(mode=mode, **config), draft)


def random_plan(seed: int, num_layers: int) -> dict[int, str]:
    """Per target layer: right / wrong / random, so rounds accept 0..k layers."""
    rng = np.random.default_rng(seed)
    return {layer: str(rng.choice(["right", "right", "wrong", "random"])) for layer in range(2, num_layers + 1)}


def test_speculative_exact_equals_greedy_ar() -> None:
    """16 random tiny models and inputs, k = 1..7; a scripted draft (right / wrong / random per
    layer, so rounds accept 0..k layers) and a random real DraftModel."""
    for seed in range(16):
        draft_len = (1, 2, 3, 5, 7)[seed % 5]
        main = tiny_main(seed)
        batch = tiny_batch(seed, batch_size=2)
        reference = make_engine(main, "ar").decode_chunk(batch)
        draft = ScriptedDraft(main, batch, plan=random_plan(seed, main.num_layers), seed=seed)
        result = make_engine(main, "speculative", draft, draft_len=draft_len).decode_chunk(batch)
        assert torch.equal(result.codes, reference.codes), f"seed {seed}, k={draft_len}"
        np.testing.assert_array_equal(result.actions, reference.actions)
        assert reference.stats.main_forwards == main.num_layers
        assert 2 <= result.stats.main_forwards <= main.num_layers
        real_draft = make_engine(main, "speculative", tiny_draft(main, seed), draft_len=draft_len)
        assert torch.equal(real_draft.decode_chunk(batch).codes, reference.codes), f"real draft, seed {seed}"


GROUPED = [dict(chunk_len=4, positions=2, latent_dim=4, group=2, num_levels=5),  # 4 tokens of 25 codes per layer
           dict(chunk_len=4, positions=1, latent_dim=2, group=2, num_levels=5),  # one token per layer
           dict(chunk_len=4, positions=2, latent_dim=4, group=2, num_levels=5, factored=True),  # factored heads
           dict(chunk_len=4, positions=2, latent_dim=4, group=2, num_levels=5, factored=True, joint_layers=1)]


@pytest.mark.parametrize("layout", GROUPED)
def test_speculative_exact_equals_greedy_ar_on_grouped_layouts(layout: dict) -> None:
    """As above on layouts of joint tokens (fewer positions than steps): exact == greedy ar token for token,
    with the scripted draft, a real draft and the parallel head; relaxed with tau 0 gives ar's actions."""
    for seed in range(6):
        draft_len = (1, 3, 7)[seed % 3]
        main = tiny_main(seed, **layout)
        batch = tiny_batch(seed, batch_size=2)
        reference = make_engine(main, "ar").decode_chunk(batch)
        assert reference.codes.shape == (2, main.positions, main.tokens_per_position, main.num_layers)
        draft = ScriptedDraft(main, batch, plan=random_plan(seed, main.num_layers), seed=seed)
        for engine in (make_engine(main, "speculative", draft, draft_len=draft_len),
                       make_engine(main, "speculative", tiny_draft(main, seed), draft_len=draft_len),
                       make_engine(main, "speculative", draft_source="parallel", draft_len=draft_len)):
            result = engine.decode_chunk(batch)
            assert torch.equal(result.codes, reference.codes), f"seed {seed}, k={draft_len}"
            np.testing.assert_array_equal(result.actions, reference.actions)
        relaxed = make_engine(main, "speculative", draft, draft_len=draft_len, acceptance="relaxed", tau=0.0)
        np.testing.assert_allclose(relaxed.decode_chunk(batch).actions, reference.actions, atol=1e-6)


def test_always_right_draft_needs_two_main_forwards() -> None:
    main = tiny_main(1)
    batch = tiny_batch(1, batch_size=1)
    draft = ScriptedDraft(main, batch, default="right")
    stats = make_engine(main, "speculative", draft, draft_len=7).decode_chunk(batch).stats
    assert stats.main_forwards == 2
    assert stats.draft_forwards == 7
    assert stats.accepted_by_depth == [0, 1, 1, 1, 1, 1, 1, 1]
    assert stats.proposed_by_depth == [0, 1, 1, 1, 1, 1, 1, 1]
    assert stats.code_agreement == 1.0


def test_always_wrong_draft_needs_eight_main_forwards() -> None:
    main = tiny_main(2)
    batch = tiny_batch(2, batch_size=1)
    draft = ScriptedDraft(main, batch, default="wrong")
    stats = make_engine(main, "speculative", draft, draft_len=7).decode_chunk(batch).stats
    assert stats.main_forwards == 8
    assert stats.draft_forwards == 7 + 6 + 5 + 4 + 3 + 2 + 1
    assert sum(stats.accepted_by_depth) == 0
    assert stats.proposed_by_depth == [0, 1, 2, 3, 4, 5, 6, 7]
    assert stats.code_agreement == 0.0


def test_draft_len_per_round() -> None:
    """k = [1, 7]: one proposal in round 1, then the rest. Always-right draft: round 1 gives layer 2 +
    the bonus layer 3, round 2 proposes 4..8 and gets all -> 3 main forwards, 1 + 5 draft forwards."""
    main = tiny_main(8)
    batch = tiny_batch(8, 1)
    engine = make_engine(main, "speculative", ScriptedDraft(main, batch), draft_len=[1, 7])
    result = engine.decode_chunk(batch)
    assert (result.stats.main_forwards, result.stats.draft_forwards) == (3, 6)
    assert torch.equal(result.codes, make_engine(main, "ar").decode_chunk(batch).codes)


def test_bonus_layer_when_all_proposals_pass() -> None:
    """k=3, always right: prefill -> 1; verify 2,3,4 + bonus 5; verify 6,7,8 = 3 main forwards."""
    main = tiny_main(3)
    batch = tiny_batch(3, batch_size=1)
    stats = make_engine(main, "speculative", ScriptedDraft(main, batch), draft_len=3).decode_chunk(batch).stats
    assert stats.main_forwards == 3
    assert stats.draft_forwards == 6
    assert stats.proposed_by_depth == [0, 1, 1, 1, 0, 1, 1, 1]


def test_relaxed_with_zero_tau_gives_exact_actions() -> None:
    for seed in range(2):
        main = tiny_main(seed)
        batch = tiny_batch(seed, batch_size=2)
        draft = ScriptedDraft(main, batch, plan=random_plan(seed, main.num_layers), seed=seed)
        exact = make_engine(main, "speculative", draft, acceptance="exact").decode_chunk(batch)
        relaxed = make_engine(main, "speculative", draft, acceptance="relaxed", tau=0.0).decode_chunk(batch)
        np.testing.assert_array_equal(relaxed.actions, exact.actions)


def test_relaxed_with_huge_tau_accepts_every_draft_layer() -> None:
    main = tiny_main(4)
    batch = tiny_batch(4, batch_size=1)
    draft = ScriptedDraft(main, batch, default="wrong")
    stats = make_engine(main, "speculative", draft, acceptance="relaxed", tau=1e9).decode_chunk(batch).stats
    assert stats.main_forwards == 2
    assert stats.acceptance_rate == 1.0
    assert stats.code_agreement == 0.0


def test_single_forward_modes_and_env_actions() -> None:
    main = tiny_main(5)
    batch = tiny_batch(5, batch_size=3)
    for mode in ("l1", "parallel"):
        result = make_engine(main, mode).decode_chunk(batch)
        assert result.stats.main_forwards == 1
        assert result.actions.shape == (3, main.chunk_len, 7)
        assert result.actions.dtype == np.float32
        assert set(np.unique(result.actions[..., 6])) <= {-1.0, 1.0}
    parallel = make_engine(main, "parallel").decode_chunk(batch)
    assert parallel.codes.shape == (3, main.chunk_len, main.latent_dim, main.num_layers)
    expected = tiny_normalizer().unnormalize(parallel.normalized_actions.numpy())[..., :6]
    np.testing.assert_allclose(parallel.actions[..., :6], expected, rtol=1e-6)


def test_early_exit_stops_before_the_last_layer() -> None:
    main = tiny_main(6)
    batch = tiny_batch(6, batch_size=1)
    never = make_engine(main, "ar", early_exit_bound=1e-12).decode_chunk(batch)
    always = make_engine(main, "ar", early_exit_bound=1e9).decode_chunk(batch)
    assert never.stats.layers_decoded == main.num_layers and not never.stats.early_exit
    assert always.stats.layers_decoded == 2 and always.stats.early_exit
    assert always.stats.main_forwards == 2


def test_ar_exit_is_ar_with_its_own_bound() -> None:
    """ar_exit == ar with early_exit_bound = exit_bound, code for code; its bound bounds the last step."""
    main = tiny_main(7)
    batch = tiny_batch(7, batch_size=2)
    for bound in (1e-12, 0.05, 1e9):
        exit_mode = make_engine(main, "ar_exit", exit_bound=bound).decode_chunk(batch)
        ar_bound = make_engine(main, "ar", early_exit_bound=bound).decode_chunk(batch)
        assert torch.equal(exit_mode.codes, ar_bound.codes)
        assert exit_mode.stats.main_forwards == ar_bound.stats.main_forwards
    full = make_engine(main, "ar").decode_chunk(batch)
    exited = make_engine(main, "ar_exit", exit_bound=1e9).decode_chunk(batch)
    assert exited.stats.layers_decoded == 2 and full.stats.layers_decoded == main.num_layers
    assert torch.equal(exited.codes, full.codes[..., :2])  # the same greedy layers, only fewer of them


def test_reference_checked_engine_measures_the_action_gap() -> None:
    from rsd_pl.decoding import ReferenceCheckedEngine

    main = tiny_main(8)
    batch = tiny_batch(8, batch_size=3)
    ar = make_engine(main, "ar")
    same = ReferenceCheckedEngine(make_engine(main, "ar"), ar).decode_chunk(batch)
    assert same.stats.deviation == [0.0, 0.0, 0.0]
    checked = ReferenceCheckedEngine(make_engine(main, "parallel"), ar).decode_chunk(batch)
    expected = (checked.normalized_actions - ar.decode_chunk(batch).normalized_actions).abs().flatten(1).amax(1)
    assert checked.stats.deviation == pytest.approx(expected.tolist()) and max(checked.stats.deviation) > 0
    assert checked.stats.main_forwards == 1  # the reference's forwards are not counted


def test_oft_mode_needs_the_oft_engine() -> None:
    with pytest.raises(RsdError, match="OFTEngine"):
        make_engine(tiny_main(0), "oft")


def test_speculative_without_draft_is_an_error() -> None:
    main = tiny_main(0)
    with pytest.raises(RsdError, match="needs a draft"):
        make_engine(main, "speculative", draft=None)


def test_mismatched_shapes_are_an_error() -> None:
    main = tiny_main(0)
    other = tiny_main(0, num_layers=4)
    with pytest.raises(RsdError, match="num_layers"):
        make_engine(main, "speculative", draft=tiny_draft(other, 0))
    with pytest.raises(RsdError, match="tokenizer num_layers"):
        DecodingEngine(main, tiny_tokenizer(other), tiny_normalizer(), DecodingConfig(mode="ar"))
    grouped, scalar = tiny_main(0, **GROUPED[0]), tiny_main(0, chunk_len=4, latent_dim=4, num_levels=5)
    with pytest.raises(RsdError, match="draft token layout .* does not match the main model's"):
        make_engine(grouped, "speculative", draft=tiny_draft(scalar, 0))
    with pytest.raises(RsdError, match="tokenizer token layout"):
        DecodingEngine(grouped, tiny_tokenizer(scalar), tiny_normalizer(), DecodingConfig(mode="ar"))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (dict(mode="beam"), "decoding.mode"),
        (dict(acceptance="maybe"), "decoding.acceptance"),
        (dict(draft_len=0), "draft_len"),
        (dict(draft_len=[1, 0]), "draft_len"),
        (dict(draft_len=[]), "draft_len"),
        (dict(acceptance="sampling", temperature=0.0), "temperature > 0"),
        (dict(acceptance="exact", temperature=0.7), "temperature=0"),
        (dict(mode="parallel", early_exit_bound=0.1), "early_exit_bound"),
        (dict(mode="ar_exit", exit_bound=0.0), "exit_bound"),
    ],
)
def test_bad_config_is_an_error(config: dict, message: str) -> None:
    with pytest.raises(RsdError, match=message):
        DecodingConfig(**config)


def test_aggregator_summary() -> None:
    main = tiny_main(7)
    batch = tiny_batch(7, batch_size=1)
    engine = make_engine(main, "speculative", ScriptedDraft(main, batch, default="wrong"), draft_len=2)
    aggregator = StatsAggregator()
    for _ in range(3):
        aggregator.add(engine.decode_chunk(batch).stats)
    summary = aggregator.summary()
    assert summary["chunks"] == 3
    assert summary["main_forwards_per_chunk"] == 8.0
    assert summary["acceptance_rate"] == 0.0
    assert summary["acceptance_rate_by_depth"][0] is None
    assert summary["latency_p95_ms"] >= summary["latency_p50_ms"] > 0


def test_relaxed_rule_accepts_exactly_when_the_action_gap_is_within_tau() -> None:
    main = tiny_main(8)
    tokenizer = tiny_tokenizer(main)
    generator = torch.Generator().manual_seed(0)
    shape = (6, main.chunk_len, main.latent_dim)
    prefix = torch.randint(0, main.num_levels, (*shape, 2), generator=generator)  # [B, T, d, 2]
    draft_codes = torch.randint(0, main.num_levels, shape, generator=generator)  # [B, T, d]
    main_logits = torch.randn(*shape, main.num_levels, generator=generator)  # [B, T, d, K]
    main_codes = main_logits.argmax(-1)
    with torch.no_grad():
        gap = (tokenizer.decode_codes(torch.cat([prefix, draft_codes[..., None]], -1))
               - tokenizer.decode_codes(torch.cat([prefix, main_codes[..., None]], -1))).abs().flatten(1).amax(1)
        tau = float(gap.median())
        verdict = RelaxedRule(tau, tokenizer.decode_codes).verify(draft_codes, main_logits, main_logits, prefix)
    assert torch.equal(verdict.accepted, gap <= tau)
    assert 0 < int(verdict.accepted.sum()) < 6
    expected = torch.where(verdict.accepted[:, None, None], draft_codes, main_codes)
    assert torch.equal(verdict.codes, expected)


def test_relaxed_rule_judges_a_run_in_one_call_as_it_would_layer_by_layer() -> None:
    """verify_run batches every proposed layer into one decoder call (shorter prefixes padded with
    the centre level); its verdicts must equal the one-layer-at-a-time ones."""
    main = tiny_main(8)
    tokenizer = tiny_tokenizer(main)
    generator = torch.Generator().manual_seed(1)
    shape = (5, main.chunk_len, main.latent_dim)
    codes = torch.randint(0, main.num_levels, (*shape, 2), generator=generator)  # layers 1..2 decided
    proposals = torch.randint(0, main.num_levels, (*shape, 4), generator=generator)  # layers 3..6
    main_logits = torch.randn(shape[0], 5, *shape[1:], main.num_levels, generator=generator)  # + bonus layer
    calls = []
    def decode(c: torch.Tensor) -> torch.Tensor:
        calls.append(c.shape)
        return tokenizer.decode_codes(c)
    with torch.no_grad():
        batched = list(RelaxedRule(0.05, decode).verify_run(codes, proposals, [None] * 4, main_logits))
        for i, verdict in enumerate(batched):
            prefix = torch.cat([codes, proposals[..., :i]], dim=-1)
            one = RelaxedRule(0.05, tokenizer.decode_codes).verify(proposals[..., i], None, main_logits[:, i], prefix)
            assert torch.equal(verdict.accepted, one.accepted) and torch.equal(verdict.codes, one.codes), i
    assert len(calls) == 1 and calls[0][0] == 4 * 2 * 5
    assert any(0 < int(v.accepted.sum()) < 5 for v in batched)  # tau splits the elements somewhere


def test_env_actions_are_unnormalised_and_the_gripper_binarised() -> None:
    engine = make_engine(tiny_main(9), "parallel")
    normalized = torch.zeros(1, 3, 7)
    normalized[0, :, 0] = torch.tensor([-1.0, 0.0, 1.0])
    normalized[0, :, 6] = torch.tensor([-0.3, 0.0, 0.2])
    actions = engine.to_env_actions(normalized)
    np.testing.assert_allclose(actions[0, :, 0], [-0.9, 0.0, 0.9], atol=1e-6)  # q01/q99 of dim 0: -0.9/0.9
    np.testing.assert_array_equal(actions[0, :, 6], [-1.0, -1.0, 1.0])  # -1 open, +1 close


def test_stats_record_every_section() -> None:
    main = tiny_main(10)
    batch = tiny_batch(10, batch_size=1)
    stats = make_engine(main, "speculative", tiny_draft(main, 10), draft_len=2).decode_chunk(batch).stats
    assert min(stats.prefill_s, stats.draft_s, stats.verify_s, stats.decode_s) > 0
    assert stats.total_s >= stats.prefill_s + stats.draft_s + stats.verify_s
    assert stats.layers_decoded == main.num_layers
    assert stats.to_dict()["acceptance_rate"] == stats.acceptance_rate
