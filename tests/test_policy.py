"""The policy boundary: an action queue executes whole chunks open loop, then re-queries."""

from __future__ import annotations

import numpy as np
import pytest

from rsd_pl.decoding import DecodingConfig, DecodingEngine
from rsd_pl.errors import RsdError
from rsd_pl.eval.policy import RSDPolicy
from tests.stubs import (
    ScriptedDraft,
    single_thread,  # noqa: F401  (fixture)
    tiny_batch,
    tiny_main,
    tiny_normalizer,
    tiny_tokenizer,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def make_policy(mode: str = "speculative", **kwargs) -> tuple[RSDPolicy, dict]:
    main = tiny_main(0, chunk_len=8, latent_dim=2, num_layers=3, num_levels=3)
    batch = tiny_batch(0, batch_size=1)
    draft = ScriptedDraft(main, batch) if mode == "speculative" else None
    engine = DecodingEngine(main, tiny_tokenizer(main), tiny_normalizer(), DecodingConfig(mode=mode), draft)
    return RSDPolicy(engine, **kwargs), batch


def test_queue_serves_the_whole_chunk_then_requeries() -> None:
    policy, batch = make_policy()
    chunk = policy.engine.decode_chunk(batch).actions
    served = [policy.select_action(batch) for _ in range(8)]
    assert len(policy.stats) == 1  # one engine call for 8 actions
    np.testing.assert_array_equal(np.stack(served), chunk[0])
    assert served[0].shape == (7,) and served[0].dtype == np.float32
    policy.select_action(batch)
    assert len(policy.stats) == 2  # the 9th action needs a new chunk
    assert policy.last_stats.main_forwards == 2


def test_reset_drops_the_queue_and_keeps_the_statistics() -> None:
    policy, batch = make_policy()
    policy.select_action(batch)
    policy.select_action(batch)
    assert len(policy.stats) == 1
    policy.reset()
    policy.select_action(batch)  # the queue was dropped: a new chunk is decoded
    assert len(policy.stats.chunks) == 2


def test_steps_per_chunk_and_batch_checks() -> None:
    policy, batch = make_policy(steps_per_chunk=4)
    for _ in range(8):
        policy.select_action(batch)
    assert len(policy.stats) == 2  # 4 actions per chunk
    with pytest.raises(RsdError, match="steps_per_chunk"):
        make_policy(steps_per_chunk=9)
    policy.reset()
    with pytest.raises(RsdError, match="batch of 1"):
        policy.select_action(tiny_batch(0, batch_size=2))


def test_predict_action_chunk_returns_batched_actions() -> None:
    policy, _ = make_policy(mode="parallel")
    actions, stats = policy.predict_action_chunk(tiny_batch(1, batch_size=3))
    assert actions.shape == (3, 8, 7)
    assert stats.mode == "parallel"


def test_lazy_batch_is_built_once_per_chunk() -> None:
    """select_action(fn) calls fn only when the engine is queried (one render per chunk)."""
    policy, batch = make_policy("ar")
    built = []

    def make_batch() -> dict:
        built.append(1)
        return batch

    for _ in range(9):
        policy.select_action(make_batch)
    assert len(built) == 2 and len(policy.stats) == 2
