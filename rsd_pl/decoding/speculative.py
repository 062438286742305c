"""Layer-wise decoding of RFSQ codes with the main model: autoregressive (the reference) and
speculative (draft proposes, main verifies in one forward).

Layers are numbered 1..L here as in the contracts; `codes[..., m - 1]` is layer m.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace

import torch
from torch import Tensor

from rsd_pl.decoding.acceptance import AcceptanceRule, choose_codes
from rsd_pl.decoding.interfaces import DraftLike, MainLike
from rsd_pl.decoding.stats import ChunkStats, SectionTimer

StopCheck = Callable[[Tensor], bool]  # codes [B, P, n, m] -> stop decoding now (early exit)


def autoregressive_decode(
    main: MainLike,
    batch: dict,
    *,
    temperature: float,
    generator: torch.Generator | None,
    stats: ChunkStats,
    timer: SectionTimer,
    stop: StopCheck | None = None,
) -> Tensor:
    """The reference: one main forward per layer with the KV cache (L forwards for L layers).
    Returns codes [B, P, n, m], m = L unless `stop` ended it early."""
    with timer.section("prefill_s"):
        prefill = main.prefill(batch)
        codes = choose_codes(prefill.layer1_logits, temperature, generator).unsqueeze(-1)  # [B, P, n, 1]
    stats.main_forwards += 1
    while codes.shape[-1] < main.num_layers and not _stopped(stop, codes, stats, timer):
        m = codes.shape[-1]
        with timer.section("verify_s"):
            logits = main.extend(codes[..., m - 1 :], first_layer=m, cache=prefill.cache)  # [B, 1, P, n, V]
            next_layer = choose_codes(logits[:, 0], temperature, generator)  # [B, P, n]
        stats.main_forwards += 1
        codes = torch.cat([codes, next_layer.unsqueeze(-1)], dim=-1)
    return codes


def speculative_decode(
    main: MainLike,
    draft: DraftLike,
    batch: dict,
    rule: AcceptanceRule,
    *,
    draft_lengths: Sequence[int],
    temperature: float,
    generator: torch.Generator | None,
    stats: ChunkStats,
    timer: SectionTimer,
    stop: StopCheck | None = None,
) -> Tensor:
    """Speculative decoding over residual layers (Leviathan et al. 2023, "Fast Inference from
    Transformers via Speculative Decoding"; Chen et al. 2023), where one "token" is a whole layer
    of P x n tokens. Returns codes [B, P, n, m], m = L unless `stop` ended it early.

    1. Prefill: one main forward over prefix + Q gives layer 1 and the Q hidden states.
    2. Draft: propose layers m+1..m+k one by one (k draft forwards), each on its own proposals;
       k of round i is draft_lengths[min(i, len - 1)].
       The draft keeps a KV cache: each forward feeds only the blocks it has not seen yet.
    3. Verify: ONE main `extend` over the blocks of layer m (the last decided layer) and of the
       proposals gives the main model's prediction for layers m+1..m+k (+ m+k+1 as a bonus).
    4. Accept the longest run of layers that pass the rule; the first rejected layer is replaced
       by the main model's choice; if all pass, the bonus prediction decides one more layer.
       So every verify yields >= 1 layer: L layers cost 2 (all accepted) .. L (none) main forwards.
    5. Crop the main KV cache to the blocks whose codes are now final (layers 1..m-1), and the
       draft's to the blocks it was fed that are still final.
    6. Repeat from 2 until L layers (or the early-exit check stops it).
    With early exit (`stop`), the draft checks every proposal and stops at the first one that passes the
    check (the exit depth the draft predicts). The verify then leaves out that proposal's block, and no bonus
    layer follows it: if every proposal is accepted, decoding ends exactly there. Every accepted prefix before it
    failed the check, and the round's last layer is checked at the next round's start, so the exit happens at
    the first layer whose move is below the bound, as in `autoregressive_decode`: with the exact rule the
    result is `ar_exit`'s codes, at its depth.
    The draft may be the main model's own parallel head (`ParallelHeadDraft`: no draft forwards).
    With a batch, a round ends at the first layer rejected by any element (the cache is shared);
    the other elements keep their own accepted codes for that layer.
    """
    num_layers = main.num_layers
    # 1. Prefill.
    with timer.section("prefill_s"):
        prefill = main.prefill(batch)
        codes = choose_codes(prefill.layer1_logits, temperature, generator).unsqueeze(-1)  # [B, P, n, 1]
    stats.main_forwards += 1
    draft_cache = None
    rounds = 0
    while codes.shape[-1] < num_layers and not _stopped(stop, codes, stats, timer):
        m = codes.shape[-1]
        num_proposed = min(draft_lengths[min(rounds, len(draft_lengths) - 1)], num_layers - m)
        rounds += 1
        # 2. Draft proposals for layers m+1..m+num_proposed (fewer if the draft's layers pass `stop`).
        with timer.section("draft_s"):
            if draft_cache is None:
                draft_cache = draft.start(prefill.query_hidden)
            proposals, draft_logits, exits = _draft_layers(draft, draft_cache, codes, num_proposed, num_layers,
                                                           temperature, generator, stop)
        num_proposed = proposals.shape[-1]
        stats.draft_forwards += num_proposed * getattr(draft, "forwards_per_layer", 1)
        with timer.section("verify_s"):
            # 3. One verify forward: blocks of layers m..last_block (block L does not exist). When the last
            # proposal passes the exit check, its block (which would only predict a bonus layer) is left out.
            last_block = m + num_proposed - 1 if exits else min(m + num_proposed, num_layers - 1)
            context = torch.cat([codes, proposals], dim=-1)  # [B, P, n, m + num_proposed]
            main_logits = main.extend(context[..., m - 1 : last_block], first_layer=m, cache=prefill.cache)
            stats.main_forwards += 1  # main_logits [B, last_block - m + 1, P, n, V]: layers m+1..last_block+1
            # 4. Accept the longest passing run; correct the first rejected layer; bonus if none rejected.
            new_layers, all_accepted = _accept_run(rule, codes, proposals, draft_logits, main_logits, m, stats)
            passed = len(new_layers) if all_accepted else len(new_layers) - 1  # proposals kept as drafted
            if all_accepted and main_logits.shape[1] > num_proposed:
                new_layers.append(choose_codes(main_logits[:, num_proposed], temperature, generator))
            codes = torch.cat([codes, torch.stack(new_layers, dim=-1)], dim=-1)
            if all_accepted and exits:  # the last proposal passed the exit check and was accepted as drafted
                stats.early_exit = True
                break
            # 5. Keep only the blocks of final layers 1..m'-1 in the main cache; the draft keeps
            # the blocks it was fed up to the last layer every element accepted as drafted (a
            # rejected layer always differs from the proposal for the element that rejected it).
            main.crop_cache(prefill.cache, prefill.cache_len, codes.shape[-1] - 1)
            draft.crop_cache(draft_cache, min(draft_cache.num_blocks, m + passed))
    return codes


def _draft_layers(
    draft: DraftLike,
    cache,
    codes: Tensor,
    num_proposed: int,
    num_layers: int,
    temperature: float,
    generator: torch.Generator | None,
    stop: StopCheck | None = None,
) -> tuple[Tensor, list[Tensor], bool]:
    """-> proposals [B, P, n, n <= num_proposed], draft logits per proposed layer ([B, P, n, V] each), and
    whether `stop` holds for codes + proposals (the proposals reach the exit depth).

    The first forward feeds every decided layer the draft cache lacks; each later one feeds only
    the previous proposal. The last proposal is never fed (nothing would read its prediction).
    With `stop`, every proposal below the last layer is checked and drafting ends at the first that passes."""
    fed = cache.num_blocks
    logits = draft.extend(codes[..., fed:], fed + 1, cache)[:, -1]  # [B, P, n, V] for layer m+1
    layers, logits_per_layer = [], []
    for i in range(num_proposed):
        if i:
            logits = draft.extend(layers[-1].unsqueeze(-1), codes.shape[-1] + i, cache)[:, 0]
        layers.append(choose_codes(logits, temperature, generator))  # [B, P, n]
        logits_per_layer.append(logits)
        below_last = codes.shape[-1] + len(layers) < num_layers  # at layer L decoding ends anyway
        if stop is not None and below_last and stop(torch.cat([codes, torch.stack(layers, -1)], -1)):
            return torch.stack(layers, dim=-1), logits_per_layer, True
    return torch.stack(layers, dim=-1), logits_per_layer, False


def _accept_run(
    rule: AcceptanceRule,
    codes: Tensor,
    proposals: Tensor,
    draft_logits: list[Tensor],
    main_logits: Tensor,
    m: int,
    stats: ChunkStats,
) -> tuple[list[Tensor], bool]:
    """Verify proposals in order; stop after the first layer some element rejects (already
    corrected by the rule). Returns the decided layers ([B, P, n] each, >= 1 of them) and
    whether every proposal passed for every element."""
    decided: list[Tensor] = []
    all_accepted = True
    for i, verdict in enumerate(rule.verify_run(codes, proposals, draft_logits, main_logits)):
        depth = m + i  # 0-based index of the proposed layer (layer m+1+i)
        stats.accepted_by_depth[depth] += int(verdict.accepted.sum())
        stats.codes_compared += verdict.agreed.numel()
        stats.codes_agreed += int(verdict.agreed.sum())
        decided.append(verdict.codes)
        if not bool(verdict.accepted.all()):
            all_accepted = False
            break
    batch_size = proposals.shape[0]
    for i in range(proposals.shape[-1]):
        stats.proposed_by_depth[m + i] += batch_size
    return decided, all_accepted


def _stopped(stop: StopCheck | None, codes: Tensor, stats: ChunkStats, timer: SectionTimer) -> bool:
    if stop is None:
        return False
    with timer.section("decode_s"):
        if not stop(codes):
            return False
    stats.early_exit = True
    return True


class ParallelHeadDraft:
    """Self-speculation: the main model's own parallel head as the draft. Its logits for every layer come
    from the Q outputs of the prefill, so proposing costs no draft forward (one small head, once per chunk);
    the proposals do not depend on the codes decided so far. Implements the DraftLike cache protocol."""

    forwards_per_layer = 0  # counted in ChunkStats.draft_forwards

    def __init__(self, main: MainLike) -> None:
        self.main = main

    def start(self, query_hidden: Tensor) -> SimpleNamespace:
        return SimpleNamespace(logits=self.main.parallel_logits(query_hidden), num_blocks=0)  # [B, L, P, n, V]

    def extend(self, codes: Tensor, first_layer: int, cache: SimpleNamespace) -> Tensor:
        """-> the head's logits [B, n, P, n, V] of layers first_layer+1..first_layer+n (codes are not read)."""
        cache.num_blocks = first_layer - 1 + codes.shape[-1]
        return cache.logits[:, first_layer : first_layer + codes.shape[-1]]

    def crop_cache(self, cache: SimpleNamespace, num_blocks: int) -> None:
        cache.num_blocks = num_blocks
