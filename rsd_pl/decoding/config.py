"""Decoding configuration: which mode, which acceptance rule, how many draft layers per round."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rsd_pl.errors import RsdError

MODES = ("oft", "l1", "parallel", "ar", "ar_exit", "speculative")
RSD_MODES = MODES[1:]  # the modes that run the RSD main model (oft runs OpenVLA-OFT's own checkpoint)
ACCEPTANCE_RULES = ("exact", "sampling", "relaxed")
DRAFT_SOURCES = ("model", "parallel")


@dataclass
class DecodingConfig:
    """How the engine turns one observation batch into one action chunk (DESIGN.md section 5)."""

    mode: str = "speculative"
    """oft (OpenVLA-OFT's own L1 head and checkpoint: the published baseline), l1 (regression head trained
    here), parallel (all layers from Q), ar (layer by layer), ar_exit (ar with early exit at `exit_bound`:
    the strongest AR baseline) or speculative."""
    acceptance: str = "exact"
    """Speculative only: exact (== greedy ar), sampling (== ar sampling), relaxed (|action diff| <= tau)."""
    draft_len: int | list[int] = 7
    """k: layers the draft proposes per round (capped by the layers left). A list gives k per round,
    the last entry repeating: [1, 7] proposes one layer first, then the rest; worth it when the
    report's acceptance by depth shows the first drafted layer is mostly rejected, since every
    proposal after a rejection is wasted draft work."""
    draft_source: str = "model"
    """Speculative only: who proposes the layers. model = the trained draft model (draft forwards);
    parallel = the main model's own parallel head (self-speculation: no draft model, no draft forwards)."""
    tau: float = 0.05
    """relaxed only: max |action difference| in normalised units for a draft layer to pass."""
    temperature: float = 0.0
    """0 = greedy (argmax); > 0 = sample codes from softmax(logits / temperature)."""
    early_exit_bound: float | None = None
    """ar / speculative: stop before layer L once the last decided layer moved the action by less
    than this (max abs, normalised units). None = always decode all L layers."""
    exit_bound: float = 0.05
    """ar_exit: stop before layer L once the last decided layer moved the action by less than this (max abs,
    normalised units). 0.05 measured on the quickstart models: 1.96x faster than ar, 0.004 from its actions."""
    seed: int | None = None
    """Seed of the engine's own sampling generator (None = torch's global generator)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.mode not in MODES:
            raise RsdError(f"decoding.mode={self.mode!r} is not one of {MODES}")
        if self.acceptance not in ACCEPTANCE_RULES:
            raise RsdError(f"decoding.acceptance={self.acceptance!r} is not one of {ACCEPTANCE_RULES}")
        if self.draft_source not in DRAFT_SOURCES:
            raise RsdError(f"decoding.draft_source={self.draft_source!r} is not one of {DRAFT_SOURCES}")
        lengths = self.draft_lengths
        if not lengths or any(not isinstance(k, int) or k < 1 for k in lengths):
            raise RsdError(f"decoding.draft_len={self.draft_len} must be an int >= 1 or a non-empty list of them")
        if self.tau < 0:
            raise RsdError(f"decoding.tau={self.tau} must be >= 0")
        if self.temperature < 0:
            raise RsdError(f"decoding.temperature={self.temperature} must be >= 0 (0 = greedy)")
        if self.early_exit_bound is not None and self.early_exit_bound <= 0:
            raise RsdError(f"decoding.early_exit_bound={self.early_exit_bound} must be > 0 or null")
        if self.exit_bound <= 0:
            raise RsdError(f"decoding.exit_bound={self.exit_bound} must be > 0")
        if self.early_exit_bound is not None and self.mode not in ("ar", "speculative"):
            raise RsdError(f"decoding.early_exit_bound is only meaningful for ar / speculative, not {self.mode!r}")
        if self.mode == "speculative":
            self._validate_rule_vs_temperature()

    def _validate_rule_vs_temperature(self) -> None:
        if self.acceptance == "sampling" and self.temperature == 0:
            raise RsdError("decoding.acceptance='sampling' needs decoding.temperature > 0 (use 'exact' for greedy)")
        if self.acceptance in ("exact", "relaxed") and self.temperature > 0:
            raise RsdError(
                f"decoding.acceptance={self.acceptance!r} compares with the main model's argmax and needs "
                f"decoding.temperature=0 (got {self.temperature}); use acceptance='sampling' to sample"
            )

    @property
    def draft_lengths(self) -> list[int]:
        """draft_len as a list: k of round i is entry min(i, len - 1)."""
        return list(self.draft_len) if isinstance(self.draft_len, list | tuple) else [self.draft_len]

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)
