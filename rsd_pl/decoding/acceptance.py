"""Choosing codes from logits, and the three rules that judge one draft-proposed layer.

Each rule looks at ONE proposed layer (per batch element) and returns a `LayerVerdict`: the
layer's final codes and whether the element accepted it entirely. Where an element rejects, the
codes are already corrected (main argmax, or accepted codes + resampled ones), so the first
rejected layer of a round is always replaced by the main model's choice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor


def sample_codes(probs: Tensor, generator: torch.Generator | None) -> Tensor:
    """probs [..., K] -> codes int64 [...], one categorical draw per position."""
    flat = probs.reshape(-1, probs.shape[-1])  # (N, K)
    return torch.multinomial(flat, 1, generator=generator).reshape(probs.shape[:-1])


def choose_codes(logits: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
    """logits [..., K] -> codes int64 [...]: argmax when temperature == 0, else a sample."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    return sample_codes(torch.softmax(logits.float() / temperature, dim=-1), generator)


@dataclass
class LayerVerdict:
    codes: Tensor  # [B, P, n] final codes of the layer
    accepted: Tensor  # bool [B]: every code of the draft's layer was accepted
    agreed: Tensor  # bool [B, P, n]: draft code == main argmax (for the agreement statistic)


class LayerByLayer:
    """`verify_run` for rules that judge one layer at a time: layer i is judged only after layers
    < i passed, so a rule that draws random numbers draws them in the order `ar` would."""

    def verify_run(self, codes: Tensor, proposals: Tensor, draft_logits: list[Tensor],
                   main_logits: Tensor) -> Iterator[LayerVerdict]:
        """Verdicts for proposals [B, P, n, n] in order (the caller stops at the first rejection).
        main_logits [B, >= n, P, n, V]: the main model's prediction for each proposed layer."""
        for i in range(proposals.shape[-1]):
            prefix = torch.cat([codes, proposals[..., :i]], dim=-1)  # codes + the layers passed so far
            yield self.verify(proposals[..., i], draft_logits[i], main_logits[:, i], prefix)


class ExactRule(LayerByLayer):
    """Accept a layer when all its codes equal the main model's argmax; output == greedy ar."""

    name = "exact"

    def verify(self, draft_codes: Tensor, draft_logits: Tensor, main_logits: Tensor, prefix: Tensor) -> LayerVerdict:
        main_codes = main_logits.argmax(dim=-1)  # [B, P, n]
        agreed = draft_codes == main_codes
        return LayerVerdict(codes=main_codes, accepted=agreed.flatten(1).all(dim=1), agreed=agreed)


class SamplingRule(LayerByLayer):
    """Per-token speculative sampling (Leviathan et al. 2023, "Fast Inference from Transformers via
    Speculative Decoding", Algorithm 1): keep draft code x ~ q with probability min(1, p(x)/q(x)),
    otherwise draw from norm(max(0, p - q)). Each kept or redrawn code is distributed exactly as p.
    The tokens of one layer are conditionally independent given the lower layers (one K**g-way softmax
    per token in both models, all read from the block below), so per-token acceptance gives the exact
    joint distribution of the layer."""

    name = "sampling"

    def __init__(self, temperature: float, generator: torch.Generator | None) -> None:
        self.temperature = temperature
        self.generator = generator

    def verify(self, draft_codes: Tensor, draft_logits: Tensor, main_logits: Tensor, prefix: Tensor) -> LayerVerdict:
        p = torch.softmax(main_logits.float() / self.temperature, dim=-1)  # [B, P, n, V]
        q = torch.softmax(draft_logits.float() / self.temperature, dim=-1)  # [B, P, n, V]
        p_x = p.gather(-1, draft_codes.unsqueeze(-1)).squeeze(-1)  # [B, P, n]
        q_x = q.gather(-1, draft_codes.unsqueeze(-1)).squeeze(-1)  # [B, P, n]
        uniform = torch.rand(p_x.shape, generator=self.generator, device=p_x.device)
        keep = uniform * q_x < p_x  # P(keep) = min(1, p/q)
        residual = (p - q).clamp_min(0)  # [B, P, n, V]
        mass = residual.sum(dim=-1, keepdim=True)
        # mass == 0 only when p == q, where keep is certain; p keeps the draw well defined.
        residual = torch.where(mass > 0, residual / mass.clamp_min(1e-30), p)
        redrawn = sample_codes(residual, self.generator)
        codes = torch.where(keep, draft_codes, redrawn)
        agreed = draft_codes == main_logits.argmax(dim=-1)
        return LayerVerdict(codes=codes, accepted=keep.flatten(1).all(dim=1), agreed=agreed)


class RelaxedRule:
    """Accept a layer when the actions decoded with the draft's layer and with the main model's
    argmax layer (same lower layers) differ by at most tau (max abs, normalised units). Lossy."""

    name = "relaxed"

    def __init__(self, tau: float, decode: Callable[[Tensor], Tensor]) -> None:
        self.tau = tau
        self.decode = decode  # codes [B, P, n, m] -> normalised actions [B, T, D]

    def verify(self, draft_codes: Tensor, draft_logits: Tensor, main_logits: Tensor, prefix: Tensor) -> LayerVerdict:
        main_codes = main_logits.argmax(dim=-1)  # [B, P, n]
        with_draft = self.decode(torch.cat([prefix, draft_codes.unsqueeze(-1)], dim=-1))  # [B, T, D]
        with_main = self.decode(torch.cat([prefix, main_codes.unsqueeze(-1)], dim=-1))  # [B, T, D]
        return self._verdict(draft_codes, main_codes, with_draft, with_main)

    def verify_run(self, codes: Tensor, proposals: Tensor, draft_logits: list[Tensor],
                   main_logits: Tensor) -> Iterator[LayerVerdict]:
        """All proposed layers with ONE decoder call (deterministic, so judging layers past the
        first rejection changes nothing but time). Layer i compares codes + proposals[:i + 1]
        with codes + proposals[:i] + main argmax i. Shorter prefixes are padded with the centre
        level, which dequantises to 0 in the residual FSQ, so padding equals the prefix itself."""
        num = proposals.shape[-1]
        main_codes = main_logits[:, :num].argmax(dim=-1).permute(0, 2, 3, 1)  # [B, P, n, n]
        centre = (main_logits.shape[-1] - 1) // 2
        variants = []
        for i in range(num):
            pad = codes.new_full((*codes.shape[:-1], num - 1 - i), centre)
            variants.append(torch.cat([codes, proposals[..., : i + 1], pad], dim=-1))
            variants.append(torch.cat([codes, proposals[..., :i], main_codes[..., i : i + 1], pad], dim=-1))
        decoded = self.decode(torch.cat(variants, dim=0)).unflatten(0, (num, 2, codes.shape[0]))  # [n, 2, B, T, D]
        for i in range(num):
            yield self._verdict(proposals[..., i], main_codes[..., i], decoded[i, 0], decoded[i, 1])

    def _verdict(self, draft_codes: Tensor, main_codes: Tensor, with_draft: Tensor, with_main: Tensor) -> LayerVerdict:
        action_gap = (with_draft - with_main).abs().flatten(1).amax(dim=1)  # [B]
        accepted = action_gap <= self.tau
        codes = torch.where(accepted[:, None, None], draft_codes, main_codes)
        return LayerVerdict(codes=codes, accepted=accepted, agreed=draft_codes == main_codes)


AcceptanceRule = ExactRule | SamplingRule | RelaxedRule
