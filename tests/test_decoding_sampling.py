"""Statistical proof: speculative + sampling draws codes from the same distribution as ar sampling.

Settings, both with 729 joint outcomes: "scalar" (T=1 step, d=2 one-scalar tokens per layer, K=3 levels,
L=3 layers: 3^6) and "grouped" (T=2 steps on P=1 position, one token of g=2 scalars, K=3: 9 codes per
token, L=3: 9^3). The exact ar distribution is computed by enumeration (teacher-forced main forward on
all 729 code tensors: P(c) = prod over layers and tokens of softmax(logits / temperature)[c]). One
observation is repeated N times in one batch (float32); a chi-square goodness-of-fit test compares the
engine's draws with it.
A negative control (a rule that keeps every draft code) must FAIL the same test: the test has power.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from rsd_pl.decoding import DecodingConfig, DecodingEngine
from rsd_pl.decoding.acceptance import LayerVerdict, SamplingRule
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

TEMPERATURE = 1.0
NUM_SAMPLES = 5000
SHAPES = {"scalar": dict(chunk_len=1, latent_dim=2, num_layers=3, num_levels=3),
          "grouped": dict(chunk_len=2, positions=1, latent_dim=2, group=2, num_layers=3, num_levels=3),
          "factored": dict(chunk_len=2, positions=1, latent_dim=2, group=2, num_layers=3, num_levels=3, factored=True,
                           joint_layers=1)}  # the configs' kind of heads: joint correction on layer 1 only


def all_code_tensors(main) -> torch.Tensor:
    """-> codes [729, P, n, L], every joint outcome once (row-major over the P*n*L tokens)."""
    shape = (main.positions, main.tokens_per_position, main.num_layers)
    rows = list(itertools.product(range(main.vocab_size), repeat=shape[0] * shape[1] * shape[2]))
    return torch.tensor(rows).view(-1, *shape)


def outcome_index(main, codes: torch.Tensor) -> torch.Tensor:
    """codes [B, P, n, L] -> int [B] index into all_code_tensors(main)."""
    flat = codes.reshape(codes.shape[0], -1)  # (B, P*n*L) in the same order as all_code_tensors
    weights = main.vocab_size ** torch.arange(flat.shape[1] - 1, -1, -1)
    return (flat * weights).sum(dim=1)


def exact_distribution(main, seed: int) -> torch.Tensor:
    codes = all_code_tensors(main)
    batch = tiny_batch(seed, batch_size=codes.shape[0], dtype=torch.float32, repeat=True)
    with torch.no_grad():
        logits = main(batch, codes).layer_logits  # [729, L, P, n, V]
    log_probs = torch.log_softmax(logits / TEMPERATURE, dim=-1)
    picked = log_probs.gather(-1, codes.permute(0, 3, 1, 2).unsqueeze(-1)).squeeze(-1)  # [729, L, P, n]
    return picked.flatten(1).sum(dim=1).exp()  # [729]


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    """Goodness of fit; outcomes expected < 5 times are pooled into one bin."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum().unsqueeze(0)])
    exp = torch.cat([expected[~small], expected[small].sum().unsqueeze(0)])
    keep = exp > 0
    obs, exp = obs[keep], exp[keep]
    statistic = ((obs - exp) ** 2 / exp).sum()
    dof = obs.numel() - 1
    return float(torch.special.gammaincc(torch.tensor(dof / 2.0), statistic / 2.0))  # chi2 survival


def draw(main, seed: int, mode: str, draft=None, draft_len: int = 2, rule=None,
         draft_source: str = "model") -> torch.Tensor:
    config = DecodingConfig(mode=mode, acceptance="sampling", temperature=TEMPERATURE, draft_len=draft_len,
                            seed=1000 + seed, draft_source=draft_source)
    engine = DecodingEngine(main, tiny_tokenizer(main), tiny_normalizer(), config, draft)
    if rule is not None:
        engine.rule = rule
    batch = tiny_batch(seed, batch_size=NUM_SAMPLES, dtype=torch.float32, repeat=True)
    codes = engine.decode_chunk(batch).codes
    return torch.bincount(outcome_index(main, codes), minlength=729).double()


class KeepEveryDraftCode(SamplingRule):
    """Broken on purpose: accepts the draft's sample unconditionally (output ~ draft, not main)."""

    def verify(self, draft_codes, draft_logits, main_logits, prefix) -> LayerVerdict:
        accepted = torch.ones(draft_codes.shape[0], dtype=torch.bool)
        return LayerVerdict(codes=draft_codes, accepted=accepted, agreed=draft_codes == main_logits.argmax(-1))


@pytest.fixture(scope="module", params=sorted(SHAPES))
def setting(request):
    main = tiny_main(11, dtype=torch.float32, **SHAPES[request.param])
    probs = exact_distribution(main, seed=11)
    assert probs.numel() == 729 and abs(float(probs.sum()) - 1) < 1e-4
    return main, probs


def test_ar_sampling_matches_enumerated_distribution(setting) -> None:
    main, probs = setting
    assert chi_square_p_value(draw(main, 11, "ar"), probs) > 1e-3


@pytest.mark.parametrize(
    ("plan", "draft_len"),
    [
        ({2: "random", 3: "random"}, 2),  # per-code rejection / resampling at every depth
        ({2: "right", 3: "random"}, 2),  # layer 2 always passes, layer 3 verified on the draft's layer 2
        ({2: "right"}, 1),  # layer 2 passes, layer 3 is the main model's bonus draw
    ],
)
def test_speculative_sampling_matches_ar_distribution(setting, plan: dict, draft_len: int) -> None:
    main, probs = setting
    batch = tiny_batch(11, batch_size=NUM_SAMPLES, dtype=torch.float32, repeat=True)
    draft = ScriptedDraft(main, batch, plan=plan, seed=5)
    assert chi_square_p_value(draw(main, 11, "speculative", draft, draft_len), probs) > 1e-3


def test_speculative_sampling_with_a_real_draft_matches_ar_distribution(setting) -> None:
    main, probs = setting
    draft = tiny_draft(main, seed=3)
    assert chi_square_p_value(draw(main, 11, "speculative", draft, 2), probs) > 1e-3


def test_self_speculative_sampling_matches_ar_distribution(setting) -> None:
    """The parallel head as the draft (q = its softmax, proposals drawn from it): still exactly ar's distribution."""
    main, probs = setting
    assert chi_square_p_value(draw(main, 11, "speculative", None, 2, draft_source="parallel"), probs) > 1e-3


def test_the_statistical_test_rejects_a_broken_rule(setting) -> None:
    main, probs = setting
    batch = tiny_batch(11, batch_size=NUM_SAMPLES, dtype=torch.float32, repeat=True)
    draft = ScriptedDraft(main, batch, plan={2: "random", 3: "random"}, seed=5)
    broken = KeepEveryDraftCode(TEMPERATURE, generator=None)
    assert chi_square_p_value(draw(main, 11, "speculative", draft, 2, rule=broken), probs) < 1e-6
