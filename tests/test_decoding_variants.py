"""Correctness of the speculation variants of issue 13 on tiny real models:

- self-speculation (decoding.draft_source=parallel): exact == greedy ar code for code, no draft forwards;
  relaxed with a huge tau keeps the parallel head's layers (2 main forwards);
- speculation with early exit: drafting stops at the first proposal that passes the exit check, and the exact
  rule returns ar_exit's codes at ar_exit's depth (the same bound), in no more main forwards.
The sampling-distribution proof of self-speculation is in tests/test_decoding_sampling.py.
"""

from __future__ import annotations

import pytest
import torch
from test_decoding import make_engine

from rsd_pl.decoding import DecodingConfig
from rsd_pl.errors import RsdError
from tests.stubs import ScriptedDraft, single_thread, tiny_batch, tiny_draft, tiny_main  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("draft_len", [1, 3, 7, [1, 7]])
def test_self_speculation_exact_equals_greedy_ar(draft_len) -> None:
    for seed in range(6):
        main = tiny_main(seed)
        batch = tiny_batch(seed, batch_size=2)
        reference = make_engine(main, "ar").decode_chunk(batch)
        result = make_engine(main, "speculative", draft_source="parallel", draft_len=draft_len).decode_chunk(batch)
        assert torch.equal(result.codes, reference.codes), f"seed {seed}, k={draft_len}"
        assert result.stats.draft_forwards == 0
        assert 2 <= result.stats.main_forwards <= main.num_layers


def test_self_speculation_proposes_the_parallel_heads_codes() -> None:
    """relaxed with a huge tau accepts every proposal: layers 2..L are the parallel head's argmax, layer 1 the
    AR head's, in 2 main forwards (prefill + one verify)."""
    main = tiny_main(3)
    batch = tiny_batch(3, batch_size=2)
    result = make_engine(main, "speculative", draft_source="parallel", acceptance="relaxed", tau=1e9,
                         draft_len=7).decode_chunk(batch)
    parallel = make_engine(main, "parallel").decode_chunk(batch)
    ar = make_engine(main, "ar").decode_chunk(batch)
    assert torch.equal(result.codes[..., 1:], parallel.codes[..., 1:])
    assert torch.equal(result.codes[..., 0], ar.codes[..., 0])
    assert (result.stats.main_forwards, result.stats.draft_forwards) == (2, 0)


def test_self_speculation_ignores_a_given_draft_and_needs_none() -> None:
    main = tiny_main(4)
    batch = tiny_batch(4, batch_size=1)
    with_draft = make_engine(main, "speculative", tiny_draft(main, 0), draft_source="parallel", acceptance="relaxed",
                             tau=1e9).decode_chunk(batch)
    without = make_engine(main, "speculative", None, draft_source="parallel", acceptance="relaxed",
                          tau=1e9).decode_chunk(batch)
    assert torch.equal(with_draft.codes, without.codes)
    with pytest.raises(RsdError, match="draft_source"):
        DecodingConfig(mode="speculative", draft_source="oracle")


def test_speculation_with_exit_stops_drafting_at_the_exit_depth() -> None:
    """Always-right draft, k = 7, a bound every layer passes: the draft proposes layer 2 only (it passes the
    check), one verify of layer 1's block decides layer 2, and decoding ends there, as ar_exit's does: no bonus
    layer 3 past the exit."""
    main = tiny_main(5)
    batch = tiny_batch(5, batch_size=1)
    draft = ScriptedDraft(main, batch, default="right")
    result = make_engine(main, "speculative", draft, draft_len=7, early_exit_bound=1e9).decode_chunk(batch)
    stats = result.stats
    assert (stats.main_forwards, stats.draft_forwards, stats.layers_decoded) == (2, 1, 2)
    assert stats.early_exit and stats.proposed_by_depth == [0, 1, 0, 0, 0, 0, 0, 0]
    assert torch.equal(result.codes, make_engine(main, "ar_exit", exit_bound=1e9).decode_chunk(batch).codes)
    no_exit = make_engine(main, "speculative", ScriptedDraft(main, batch), draft_len=7).decode_chunk(batch).stats
    assert (no_exit.main_forwards, no_exit.draft_forwards, no_exit.layers_decoded) == (2, 7, 8)


@pytest.mark.parametrize("draft_source", ["model", "parallel"])
def test_exact_speculation_with_exit_equals_ar_exit(draft_source) -> None:
    """Lossless against ar_exit: the same codes at the same depth, in no more main forwards, whatever the draft
    proposes (random tiny drafts, and scripted ones that are always right, so that whole runs of proposals are
    accepted and a bonus layer past the exit would show; the random parallel heads accept nothing)."""
    depths, accepted = set(), 0
    for seed in range(8):
        main = tiny_main(seed)
        batch = tiny_batch(seed, batch_size=2)
        for bound in (0.002, 0.02, 0.2):
            ar_exit = make_engine(main, "ar_exit", exit_bound=bound).decode_chunk(batch)
            drafts = [tiny_draft(main, seed), ScriptedDraft(main, batch, default="right")] \
                if draft_source == "model" else [None]
            for draft in drafts:
                for draft_len in (1, [1, 7], 7):
                    result = make_engine(main, "speculative", draft, draft_source=draft_source, draft_len=draft_len,
                                         early_exit_bound=bound).decode_chunk(batch)
                    assert torch.equal(result.codes, ar_exit.codes), (seed, bound, draft_len)
                    assert result.stats.early_exit == ar_exit.stats.early_exit
                    assert result.stats.main_forwards <= ar_exit.stats.main_forwards
                    depths.add(result.stats.layers_decoded)
                    accepted += sum(result.stats.accepted_by_depth)
    assert len(depths) > 2  # the bounds really exit at different depths
    if draft_source == "model":  # the always-right draft's runs are accepted: the no-bonus-past-the-exit path ran
        assert accepted > 0
