"""ActionRFSQAE (plain torch): codes, prefixes, save/load, and reconstruction on smooth chunks."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from rsd_pl.data.synthetic import write_synthetic_demos
from rsd_pl.lit.action_data import ActionChunkDataModule
from rsd_pl.models.rfsq import ActionRFSQAE, ResidualFSQ, UniformBinTokenizer, sample_depths


@pytest.fixture
def one_thread():
    """Tiny models train ~10x faster on one thread on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_codes_shape_dtype_range():
    torch.manual_seed(0)
    model = ActionRFSQAE()
    codes = model.tokenize(torch.rand(5, 8, 7) * 2 - 1)
    assert codes.shape == (5, 8, 16, 8) and codes.dtype == torch.int64
    assert codes.min() >= 0 and codes.max() < 7
    assert 80_000 < model.num_parameters() < 130_000  # "about 0.1M"


def test_residual_layers_refine_coarse_to_fine():
    quantizer = ResidualFSQ(num_layers=8, num_levels=7)
    z = torch.rand(200, 16) * 2 - 1
    codes = quantizer.quantize(z)  # [200, 16, 8]
    errors = [(quantizer.dequantize(codes[..., :m]) - z).abs().max().item() for m in range(1, 9)]
    for m, error in enumerate(errors, start=1):
        assert error <= 6.0**-m + 1e-6  # half a step of layer m: (K-1)**-m
    assert errors[0] > 0.1 and errors[-1] < 1e-6
    depths = torch.tensor([1, 3] * 100)
    mixed = quantizer.dequantize_depths(codes, depths)
    torch.testing.assert_close(mixed[1::2], quantizer.dequantize(codes[1::2, :, :3]))


def test_teacher_forced_codes_condition_on_the_true_layers():
    quantizer = ResidualFSQ(num_layers=3, num_levels=7)
    z = torch.rand(50, 16) * 2 - 1
    codes = quantizer.quantize(z)
    assert torch.equal(quantizer.teacher_forced_codes(z, codes), codes)  # an exact estimate gets every layer
    # z = 0.4 has digits 1, 1, 1 (codes 4, 4, 4). An estimate of 0.42 gets layer 1 right, then overshoots:
    # layer 2 sees 0.42 - 1/3 -> digit round(0.0867 * 18) = 2; layer 3 is conditioned on the TRUE layer 2
    # (0.42 - 1/3 - 1/18 = 0.031, clamped to digit 3); conditioned on its own layer 2 it would be digit -3.
    true = quantizer.quantize(torch.tensor([0.4]))
    assert true.tolist() == [[4, 4, 4]]
    assert quantizer.teacher_forced_codes(torch.tensor([0.42]), true).tolist() == [[4, 5, 6]]


def test_decode_every_prefix_and_bad_codes():
    model = ActionRFSQAE()
    codes = model.tokenize(torch.zeros(2, 8, 7))
    for m in range(1, 9):
        assert model.decode_codes(codes[..., :m]).shape == (2, 8, 7)
    with pytest.raises(ValueError, match="layers"):
        model.decode_codes(codes[..., :0])
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        model.decode_codes(codes + 7)
    with pytest.raises(ValueError, match=r"\[B, P=8, n=16, m\]"):
        model.decode_codes(codes.permute(0, 3, 1, 2))  # [B, L, T, d]: the wrong layout
    with pytest.raises(ValueError, match="num_levels"):
        ActionRFSQAE(num_levels=8)


def test_straight_through_reaches_encoder():
    model = ActionRFSQAE()
    recon, _ = model(torch.rand(4, 8, 7), depths=torch.tensor([1, 2, 8, 8]))
    recon.sum().backward()
    assert model.encoder.linear.weight.grad.abs().sum() > 0


def test_save_load_exact(tmp_path):
    torch.manual_seed(1)
    model = ActionRFSQAE(hidden=32)
    save_file(model.state_dict(), tmp_path / "ae.safetensors")
    again = ActionRFSQAE(**model.config)
    again.load_state_dict(load_file(tmp_path / "ae.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, again.state_dict()[key])
    x = torch.rand(3, 8, 7)
    assert torch.equal(model.tokenize(x), again.tokenize(x))
    assert torch.equal(model(x)[0], again(x)[0])


def test_sample_depths():
    generator = torch.Generator().manual_seed(0)
    assert (sample_depths(64, 8, 0.0, generator) == 8).all()
    depths = sample_depths(2000, 8, 1.0, generator)
    assert set(depths.tolist()) == set(range(1, 9))


def test_uniform_bins_baseline():
    tokenizer = UniformBinTokenizer(256)
    x = torch.rand(1000) * 2 - 1
    tokens = tokenizer.tokenize(x)
    assert tokens.min() >= 0 and tokens.max() <= 255
    assert (tokenizer.detokenize(tokens) - x).abs().max() <= 1 / 256 + 1e-6
    assert tokenizer.tokenize(torch.tensor([1.0, -1.0, 5.0])).tolist() == [255, 0, 255]


def test_reconstruction_on_smooth_chunks(tmp_path, one_thread):
    """All 8 layers: held-out MAE < 0.01 (normalised); error never grows as layers are added."""
    torch.manual_seed(0)
    path = write_synthetic_demos(tmp_path / "demos.hdf5", num_demos=40, seed=0, image_size=8)
    data = ActionChunkDataModule(str(path), val_fraction=0.1)
    data.setup("fit")
    train, val = data.train_set.chunks, data.val_set.chunks  # [N, 8, 7] normalised
    model = ActionRFSQAE()
    steps = 1200
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        batch = train[torch.randint(0, len(train), (128,))]
        recon, _ = model(batch, depths=sample_depths(128, 8, 0.5))
        loss = (recon - batch).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        codes = model.tokenize(val)
        errors = [(model.decode_codes(codes[..., :m]) - val).abs().mean().item() for m in range(1, 9)]
    assert errors[-1] < 0.01, errors
    assert all(deeper <= coarser + 1e-6 for coarser, deeper in zip(errors, errors[1:], strict=False)), errors
    assert errors[0] > 2 * errors[2], errors  # the first layers matter


def test_load_tokenizer_refuses_mismatched_artifacts(tmp_path):
    from rsd_pl.errors import RsdError
    from rsd_pl.models.rfsq import load_tokenizer
    from rsd_pl.registry import Registry

    registry = Registry(tmp_path)
    model = ActionRFSQAE(hidden=16)
    stats = {"stats": {k: [0.0] * 7 for k in ("q01", "q99", "mean", "std", "min", "max")} | {"mask": [True] * 7}}
    registry.export("rfsq", model.state_dict(), config={"model": {**model.config, "hidden": 24}},
                    metrics={}, lineage={}, extra_json=stats)
    with pytest.raises(RsdError, match=r"rfsq@1.*do not fit its config"):
        load_tokenizer("rfsq@1", registry)
    registry.export("rfsq", model.state_dict(), config={"hidden": 16}, metrics={}, lineage={}, extra_json=stats)
    with pytest.raises(RsdError, match=r"rfsq@2.*no 'model' section"):
        load_tokenizer("rfsq@2", registry)
    with pytest.raises(RsdError):
        load_tokenizer("nothere@best", registry)
    registry.export("rfsq", model.state_dict(), config={"model": model.config}, metrics={}, lineage={},
                    extra_json=stats)
    loaded, normalizer, artifact = load_tokenizer("rfsq@latest", registry)
    assert artifact.version == 3 and not loaded.training and normalizer.action_dim == 7
