"""Token layouts: joint codes of g scalars, P positions per layer block, validation, and the models on them.

The original layout (P = T, g = 1) is covered by test_rfsq / test_main_model / test_draft; here the grouped
ones: the tokenizer's codes and prefixes, the main model's teacher forcing == prefill + extend with a query
block longer than a layer block, the draft's cache, the openvla block mask, and configs written before the
layout settings existed.
"""

from __future__ import annotations

import pytest
import torch

from rsd_pl.errors import RsdError
from rsd_pl.models.backbone import BackboneConfig
from rsd_pl.models.draft import DraftConfig, DraftModel
from rsd_pl.models.heads import joint_logits
from rsd_pl.models.layout import MAX_VOCAB, TokenLayout
from rsd_pl.models.main_model import MainModel, MainModelConfig
from rsd_pl.models.openvla.backbone import block_causal_mask
from rsd_pl.models.rfsq import ActionRFSQAE
from tests.stubs import randomise_joint_heads

MICRO = dict(vision_hidden=32, vision_layers=1, vision_heads=2, vision_mlp=64,
             hidden=32, layers=2, heads=2, kv_heads=1, mlp=64)
# 16 scalars in tokens of 4 (4 positions x 4 scalars, 1 token each), and 8 scalars in tokens of 2 at K 5
# on 2 positions (2 tokens per position): both have fewer positions than steps.
GROUPED = [dict(positions=4, latent_dim=4, group=4, num_levels=7),
           dict(positions=2, latent_dim=4, group=2, num_levels=5)]
FACTORED = dict(positions=2, latent_dim=4, group=2, num_levels=5, factored=True)
FACTORED_LAYER1 = FACTORED | dict(joint_layers=1)  # the joint correction on layer 1 only


def test_join_and_split_are_inverse_and_most_significant_first():
    layout = TokenLayout.of(chunk_len=8, latent_dim=4, num_levels=7, positions=2, group=2)
    digits = torch.randint(0, 7, (3, 2, 4, 5))  # [B, P, d, L]
    codes = layout.join(digits)
    assert codes.shape == (3, 2, 2, 5) and int(codes.max()) < 49
    assert torch.equal(layout.split(codes), digits)
    pair = TokenLayout.of(chunk_len=8, latent_dim=2, num_levels=7, positions=8, group=2)
    assert pair.join(torch.tensor([[2], [5]])).tolist() == [[2 * 7 + 5]]  # scalar 0 is the high digit
    assert (layout.tokens_per_layer, layout.vocab_size, layout.latent_size, layout.queries_per_position) == (4, 49,
                                                                                                          8, 4)
    assert layout.split(torch.tensor([[layout.centre_code]])).tolist() == [[3], [3]]  # every digit at the centre


@pytest.mark.parametrize(("settings", "message"), [
    (dict(latent_dim=6, group=4), "latent_dim=6 .* not divisible by group=4"),
    (dict(latent_dim=8, group=8), f"num_levels=7 with group=8 gives 7\\*\\*8 = 5764801 codes per token, more than a "
                                  f"head may predict \\({MAX_VOCAB}\\)"),
    (dict(positions=3), "positions=3 does not divide chunk_len=8"),
    (dict(num_levels=6), "num_levels=6 must be odd"),
    (dict(group=0), "group=0 must be an integer >= 1"),
])
def test_a_layout_that_does_not_fit_is_refused_naming_the_setting(settings, message):
    options = dict(chunk_len=8, latent_dim=4, num_levels=7, positions=4, group=1) | settings
    with pytest.raises(RsdError, match=message):
        TokenLayout.of(**options)
    with pytest.raises(RsdError, match="tokenizer " + message):
        ActionRFSQAE(action_dim=7, num_layers=4, **options)
    with pytest.raises(RsdError, match="model.network." + message):
        MainModel(MainModelConfig(backbone=BackboneConfig(image_size=32, patch_size=8, extra=MICRO),
                                  num_layers=4, **options))


@pytest.mark.parametrize("settings", GROUPED)
def test_grouped_tokenizer_quantises_as_the_scalars_do_and_every_prefix_decodes(settings):
    torch.manual_seed(0)
    tokenizer = ActionRFSQAE(action_dim=7, chunk_len=8, num_layers=4, hidden=32, num_hidden=1, **settings).eval()
    layout = tokenizer.layout
    actions = torch.randn(5, 8, 7) * 0.5
    with torch.no_grad():
        codes = tokenizer.tokenize(actions)
        assert codes.shape == (5, layout.positions, layout.tokens_per_position, 4)
        assert 0 <= int(codes.min()) and int(codes.max()) < layout.vocab_size
        z = tokenizer.encode(actions)  # [B, P, d]
        for depth in range(1, 5):  # grouping changes the names of the codes, not what they dequantise to
            per_scalar = tokenizer.quantizer.dequantize(tokenizer.quantizer.quantize(z)[..., :depth])
            torch.testing.assert_close(tokenizer.dequantize(codes[..., :depth]), per_scalar)
            assert tokenizer.decode_codes(codes[..., :depth]).shape == (5, 8, 7)
        errors = [(tokenizer.dequantize(codes[..., :m]) - z).abs().max().item() for m in range(1, 5)]
        assert errors == sorted(errors, reverse=True) and errors[-1] <= (layout.num_levels - 1) ** -4 + 1e-6
        centre = torch.full_like(codes[..., :1], layout.centre_code)
        assert float(tokenizer.dequantize(centre).abs().max()) == 0.0
        recon, forward_codes = tokenizer(actions, depths=torch.tensor([1, 2, 3, 4, 4]))
        assert torch.equal(forward_codes, codes) and recon.shape == actions.shape
    with pytest.raises(ValueError, match=f"\\[0, {layout.vocab_size}\\)"):
        tokenizer.decode_codes(codes + layout.vocab_size)


def micro_main(**settings) -> MainModel:
    torch.manual_seed(0)
    backbone = BackboneConfig(image_size=32, patch_size=8, max_text_len=12, extra=MICRO, use_object_pos=True)
    return MainModel(MainModelConfig(backbone=backbone, num_layers=5, **settings)).eval()


def micro_batch(batch_size: int = 2) -> dict:
    torch.manual_seed(3)
    return {"images": torch.rand(batch_size, 1, 3, 32, 32), "proprio": torch.randn(batch_size, 8),
            "object_pos": torch.randn(batch_size, 6),
            "instruction": ["pick up the black bowl", "put the bowl on the stove"][:batch_size]}


def test_factored_logits_score_a_code_as_its_digits_plus_its_correction():
    layout = TokenLayout.of(chunk_len=8, latent_dim=3, num_levels=5, positions=8, group=3)
    digit_logits, correction = torch.randn(2, 3, 5), torch.randn(2, 125)
    logits = joint_logits(digit_logits, correction)
    digits = layout.split(torch.arange(125).view(125, 1, 1))[:, :, 0].T  # (g, codes): [codes, n 1, m 1] -> digits
    expected = correction + sum(digit_logits[:, i, digits[i]] for i in range(3))
    torch.testing.assert_close(logits, expected)


def _independent_digits(logits: torch.Tensor) -> bool:
    """Token logits [..., 25] of 2 digits at K 5 -> whether the distribution is the product of its marginals."""
    probs = logits.softmax(-1).view(*logits.shape[:-1], 5, 5)
    marginals = probs.sum(-1, keepdim=True) * probs.sum(-2, keepdim=True)
    return torch.allclose(probs, marginals, atol=1e-6, rtol=1e-5)


def test_a_factored_model_starts_as_independent_digits_and_its_old_layouts_are_unchanged():
    model = micro_main(**FACTORED)
    codes = torch.randint(0, 25, (2, 2, 2, 5))
    out = model(micro_batch(), codes)
    assert _independent_digits(out.layer_logits.detach()) and _independent_digits(out.parallel_logits.detach())
    randomise_joint_heads([*model.layer_heads.heads, model.parallel_head.proj])
    out = model(micro_batch(), codes)
    assert not _independent_digits(out.layer_logits[:, 1:].detach())  # the correction couples the digits
    layer1 = micro_main(**FACTORED_LAYER1)
    randomise_joint_heads([*layer1.layer_heads.heads, layer1.parallel_head.proj])
    out = layer1(micro_batch(), codes)
    for logits in (out.layer_logits.detach(), out.parallel_logits.detach()):  # joint on layer 1 only
        assert not _independent_digits(logits[:, :1]) and _independent_digits(logits[:, 1:])
    plain = {k for k in micro_main(**GROUPED[1]).state_dict()}
    assert plain < set(model.state_dict())  # factored adds digit heads, keeps every key of the plain model
    assert {k for k in micro_main(**(FACTORED | dict(group=1, latent_dim=4))).state_dict()} == \
        {k for k in micro_main(positions=2, latent_dim=4, num_levels=5).state_dict()}  # g 1: nothing to factor


@pytest.mark.parametrize("settings", GROUPED + [FACTORED, FACTORED_LAYER1])
def test_grouped_main_model_prefill_and_extend_equal_teacher_forcing(settings):
    model = micro_main(**settings)
    if settings.get("factored"):  # the joint correction starts at zero; draw it so both terms count
        randomise_joint_heads([*model.layer_heads.heads, model.parallel_head.proj])
    layout = model.layout
    vocab, positions, tokens = layout.vocab_size, layout.positions, layout.tokens_per_position
    batch, codes = micro_batch(), torch.randint(0, vocab, (2, positions, tokens, 5))
    with torch.no_grad():
        reference = model(batch, codes)
        assert reference.layer_logits.shape == (2, 5, positions, tokens, vocab)
        assert reference.parallel_logits.shape == (2, 5, positions, tokens, vocab)
        assert reference.l1_actions.shape == (2, 8, 7)  # the regression head keeps one query per step
        pre = model.prefill(batch)
        logits = [pre.layer1_logits]
        for layer in range(1, 5):
            logits.append(model.extend(codes[..., layer - 1 : layer], layer, pre.cache)[:, 0])
        torch.testing.assert_close(torch.stack(logits, 1), reference.layer_logits, atol=1e-5, rtol=1e-5)
        assert pre.cache.get_seq_length() == pre.cache_len + 4 * positions
        model.crop_cache(pre.cache, pre.cache_len, 1)
        torch.testing.assert_close(model.extend(codes[..., 1:4], 2, pre.cache), reference.layer_logits[:, 2:5],
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.parallel_logits(pre.query_hidden), reference.parallel_logits,
                                   atol=1e-5, rtol=1e-5)
        changed = codes.clone()
        changed[..., 2:] = (changed[..., 2:] + 1) % vocab
        later = model(batch, changed).layer_logits
    torch.testing.assert_close(later[:, :3], reference.layer_logits[:, :3])  # layer l sees layers < l only
    assert not torch.allclose(later[:, 3:], reference.layer_logits[:, 3:])


@pytest.mark.parametrize("settings", GROUPED + [FACTORED, FACTORED_LAYER1])
def test_grouped_draft_cache_matches_teacher_forcing(settings):
    torch.manual_seed(0)
    draft = DraftModel(DraftConfig(main_hidden=32, hidden=32, layers=2, heads=2, mlp=64, num_layers=5,
                                   **settings)).eval()
    if settings.get("factored"):
        randomise_joint_heads(list(draft.heads.heads))
    layout = draft.layout
    query, codes = torch.randn(3, 8, 32), torch.randint(0, layout.vocab_size, (3, layout.positions,
                                                                                 layout.tokens_per_position, 5))
    with torch.no_grad():
        full = draft(query, codes)  # layers 2..5
        assert full.shape == (3, 4, layout.positions, layout.tokens_per_position, layout.vocab_size)
        cache = draft.start(query)
        torch.testing.assert_close(draft.extend(codes[..., :2], 1, cache), full[:, :2], atol=1e-5, rtol=1e-5)
        assert cache.keys[0].shape[2] == 8 + 2 * layout.positions
        draft.crop_cache(cache, 1)
        torch.testing.assert_close(draft.extend(codes[..., 1:4], 2, cache), full[:, 1:4], atol=1e-5, rtol=1e-5)


def test_block_mask_with_a_query_block_longer_than_the_layer_blocks():
    """prefix 2, query block 4, layer blocks 2: a block sees the prefix, the queries and earlier blocks."""
    mask = block_causal_mask(prefix_len=2, block_len=2, past=0, new=10, batch=1, device=torch.device("cpu"),
                             query_len=4)[0, 0]
    blocks = [-1, -1, 0, 0, 0, 0, 1, 1, 2, 2]
    for query in range(10):
        for key in range(10):
            expected = blocks[key] == -1 or (blocks[query] >= 0 and blocks[key] <= blocks[query])
            assert bool(mask[query, key]) == expected, (query, key)
    extend = block_causal_mask(prefix_len=2, block_len=2, past=8, new=2, batch=1, device=torch.device("cpu"),
                               query_len=4)[0, 0]
    assert extend.all()  # the last block sees everything before it and itself


def test_configs_written_before_the_layout_settings_load_unchanged():
    """Registries store the constructor arguments; older ones have neither positions nor group."""
    torch.manual_seed(0)
    tokenizer = ActionRFSQAE(hidden=32, num_hidden=1)
    old_config = {k: v for k, v in tokenizer.config.items() if k not in ("positions", "group")}
    rebuilt = ActionRFSQAE(**old_config)
    rebuilt.load_state_dict(tokenizer.state_dict())  # strict: same tensors, same shapes
    assert rebuilt.layout == tokenizer.layout and rebuilt.layout.positions == 8 and rebuilt.vocab_size == 7
    main_cfg = micro_main().cfg.to_dict()
    old_main = {k: v for k, v in main_cfg.items() if k not in ("positions", "group")}
    rebuilt_main = MainModel(MainModelConfig.from_dict(old_main))
    rebuilt_main.load_state_dict(micro_main().state_dict())
    assert rebuilt_main.layout == tokenizer.layout
    draft_cfg = DraftConfig(main_hidden=32, hidden=32, layers=1, heads=2, mlp=64).to_dict()
    old_draft = {k: v for k, v in draft_cfg.items() if k not in ("positions", "group")}
    DraftModel(DraftConfig.from_dict(old_draft)).load_state_dict(DraftModel(DraftConfig(**draft_cfg)).state_dict())
