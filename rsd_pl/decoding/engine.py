"""The decoding engine: one observation batch -> one chunk of env actions, in any of the modes
`l1`, `parallel`, `ar`, `speculative`, on the same trained weights (DESIGN.md section 5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from rsd_pl.decoding.acceptance import AcceptanceRule, ExactRule, RelaxedRule, SamplingRule, choose_codes
from rsd_pl.decoding.config import DecodingConfig
from rsd_pl.decoding.interfaces import DraftLike, MainLike, NormalizerLike, TokenizerLike, module_device
from rsd_pl.decoding.speculative import ParallelHeadDraft, autoregressive_decode, speculative_decode
from rsd_pl.decoding.stats import ChunkStats, SectionTimer
from rsd_pl.errors import RsdError

GRIPPER_DIM = 6


@dataclass
class ChunkResult:
    actions: np.ndarray  # float32 [B, T, D] env actions: un-normalised, gripper -1 open / +1 close
    normalized_actions: Tensor  # [B, T, D] what the model produced, normalised units
    codes: Tensor | None  # int64 [B, P, n, m] decided token codes (None in l1 mode)
    stats: ChunkStats


class DecodingEngine:
    """Decodes action chunks with a main model, an optional draft, the RFSQ tokenizer and the
    action normaliser. Modules are put in eval mode and the draft / tokenizer on the main
    model's device. Speculative mode without a draft is an error, never a fallback."""

    def __init__(
        self,
        main: MainLike,
        tokenizer: TokenizerLike,
        normalizer: NormalizerLike,
        config: DecodingConfig,
        draft: DraftLike | None = None,
    ) -> None:
        config.validate()
        if config.mode == "oft":
            raise RsdError("decoding.mode='oft' runs OpenVLA-OFT's own checkpoint: use rsd_pl.decoding.OFTEngine")
        if config.mode == "speculative" and config.draft_source == "parallel":
            draft = ParallelHeadDraft(main)  # self-speculation: a draft model, if given, is not used
        if config.mode == "speculative" and draft is None:
            raise RsdError("decoding.mode='speculative' with draft_source='model' needs a draft model, and none "
                           "was given (or set decoding.draft_source='parallel')")
        _check_shapes(main, tokenizer, "tokenizer")
        if draft is not None:
            _check_shapes(main, draft, "draft")
        self.main, self.tokenizer, self.normalizer, self.draft, self.config = main, tokenizer, normalizer, draft, config
        self.device = module_device(main)
        for module in (main, tokenizer, self.draft):
            if isinstance(module, torch.nn.Module):
                module.eval()
                if module is not main:
                    module.to(self.device)
        self.generator = _make_generator(config.seed, self.device)
        self.rule = self._make_rule()

    def _make_rule(self) -> AcceptanceRule:
        if self.config.acceptance == "sampling":
            return SamplingRule(self.config.temperature, self.generator)
        if self.config.acceptance == "relaxed":
            return RelaxedRule(self.config.tau, self.tokenizer.decode_codes)
        return ExactRule()

    @torch.inference_mode()
    def decode_chunk(self, batch: dict) -> ChunkResult:
        """batch: the model batch of docs/contracts.md -> ChunkResult with actions [B, T, D]."""
        batch = to_device(batch, self.device)
        stats = ChunkStats(mode=self.config.mode, num_layers=self.main.num_layers, batch_size=batch_size_of(batch))
        timer = SectionTimer(stats, self.device)
        start = timer.now()
        if self.config.mode == "l1":
            codes, normalized = None, self._l1(batch, stats, timer)
        else:
            codes = self._codes(batch, stats, timer)
            with timer.section("decode_s"):
                normalized = self.tokenizer.decode_codes(codes)  # [B, T, D]
            stats.layers_decoded = codes.shape[-1]
        with timer.section("decode_s"):
            actions = self.to_env_actions(normalized)
        stats.total_s = timer.now() - start
        return ChunkResult(actions=actions, normalized_actions=normalized, codes=codes, stats=stats)

    def _l1(self, batch: dict, stats: ChunkStats, timer: SectionTimer) -> Tensor:
        with timer.section("prefill_s"):
            prefill = self.main.prefill(batch)
            normalized = self.main.l1_actions(prefill.query_hidden)  # [B, T, D]
        stats.main_forwards = 1
        return normalized

    def _codes(self, batch: dict, stats: ChunkStats, timer: SectionTimer) -> Tensor:
        """-> token codes [B, P, n, m] in the configured code mode."""
        cfg = self.config
        if cfg.mode == "parallel":
            with timer.section("prefill_s"):
                prefill = self.main.prefill(batch)
                logits = self.main.parallel_logits(prefill.query_hidden)  # [B, L, P, n, V]
                codes = choose_codes(logits, cfg.temperature, self.generator).permute(0, 2, 3, 1)  # [B, P, n, L]
            stats.main_forwards = 1
            return codes
        bound = cfg.exit_bound if cfg.mode == "ar_exit" else cfg.early_exit_bound
        stop = self._early_exit_check(bound) if bound is not None else None
        common = dict(temperature=cfg.temperature, generator=self.generator, stats=stats, timer=timer, stop=stop)
        if cfg.mode in ("ar", "ar_exit"):
            return autoregressive_decode(self.main, batch, **common)
        return speculative_decode(self.main, self.draft, batch, self.rule, draft_lengths=cfg.draft_lengths, **common)

    def _early_exit_check(self, bound: float):
        """Stop when the last decided layer moved the decoded action by less than the bound
        (max abs over the chunk, every batch element): finer layers move it less still.
        ar checks after every layer; speculative checks every proposal (drafting stops at the first that
        passes, and no bonus layer follows it) and every round's last layer, so both stop at the first layer
        that passes: exact speculative == ar_exit with the same bound, code for code and depth for depth."""

        def stop(codes: Tensor) -> bool:  # timed by the caller (decode_s, or draft_s inside drafting)
            if codes.shape[-1] < 2:
                return False
            with_last = self.tokenizer.decode_codes(codes)  # [B, T, D]
            without_last = self.tokenizer.decode_codes(codes[..., :-1])  # [B, T, D]
            return bool((with_last - without_last).abs().max() < bound)

        return stop

    def to_env_actions(self, normalized: Tensor) -> np.ndarray:
        """normalised [B, T, D] -> env actions float32 [B, T, D]: un-normalised with the
        tokenizer's statistics, gripper binarised by sign to -1 open / +1 close (as OFT does)."""
        raw = np.asarray(self.normalizer.unnormalize(normalized.detach().float().cpu().numpy()), dtype=np.float32)
        raw = raw.copy()
        raw[..., GRIPPER_DIM] = np.where(raw[..., GRIPPER_DIM] > 0, 1.0, -1.0)
        return raw


class ReferenceCheckedEngine:
    """An engine that also decodes every observation with a reference engine (e.g. greedy `ar`) and records
    how far its normalised actions are from the reference's: `stats.deviation` [B] (max abs over the chunk).
    The reference decode runs after the timed decode and is not counted in the chunk's statistics."""

    def __init__(self, engine: DecodingEngine, reference: DecodingEngine) -> None:
        self.engine, self.reference = engine, reference
        self.config, self.main = engine.config, engine.main

    def decode_chunk(self, batch: dict) -> ChunkResult:
        result = self.engine.decode_chunk(batch)
        with torch.inference_mode():
            reference = self.reference.decode_chunk(batch)
            gap = (result.normalized_actions.float().cpu() - reference.normalized_actions.float().cpu()).abs()
        result.stats.deviation = gap.flatten(1).max(dim=1).values.tolist()  # (B,)
        return result


def _check_shapes(main: MainLike, other: object, what: str) -> None:
    """The tokenizer / draft must use the main model's T, d, L, K and token layout (P, g), read from
    attributes, `.cfg` or `.layout`."""
    for key in ("num_layers", "chunk_len", "latent_dim", "num_levels"):
        main_value = getattr(main, key)
        value = getattr(other, key, getattr(getattr(other, "cfg", None), key, None))
        if value is not None and value != main_value:
            raise RsdError(f"{what} {key}={value} does not match the main model's {key}={main_value}")
    main_layout, layout = getattr(main, "layout", None), getattr(other, "layout", None)
    if main_layout is not None and layout is not None and layout != main_layout:
        raise RsdError(f"{what} token layout ({layout.describe()}) does not match the main model's "
                       f"({main_layout.describe()})")


def _make_generator(seed: int | None, device: torch.device) -> torch.Generator | None:
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()}


def batch_size_of(batch: dict) -> int:
    for value in batch.values():
        if isinstance(value, Tensor):
            return value.shape[0]
        if isinstance(value, list):
            return len(value)
    raise RsdError(f"the model batch has no tensor or list to read the batch size from (keys {sorted(batch)})")

