"""Checkpoint registry: versions, aliases, exact round trip, atomicity, clear errors, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

import pytest
import torch

from rsd_pl import registry as registry_module
from rsd_pl.errors import RsdError
from rsd_pl.registry import Registry, main


def _tensors(seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        "encoder.weight": torch.randn(16, 7, generator=generator),
        "codes": torch.randint(0, 7, (2, 8, 16, 8), generator=generator),
        "scale": torch.tensor(0.5, dtype=torch.float64),
        "half": torch.randn(3, generator=generator).to(torch.bfloat16),
    }


def _export(reg: Registry, name: str = "rfsq", loss: float = 1.0, **kwargs) -> registry_module.Artifact:
    return reg.export(
        name,
        _tensors(int(loss * 1000)),
        config={"num_layers": 8, "num_levels": 7},
        metrics={"val/loss": loss, "val/mae_l8": loss / 10},
        lineage={"data_fingerprint": "abc123"},
        extra_json={"stats": {"q01": [-1.0] * 7, "q99": [1.0] * 7}},
        best_metric="val/loss",
        best_mode="min",
        **kwargs,
    )


def test_export_resolve_versions_and_aliases(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = _export(reg, loss=0.5)
    second = _export(reg, loss=0.2)
    third = _export(reg, loss=0.9)
    assert [first.version, second.version, third.version] == [1, 2, 3]
    assert third.path == tmp_path / "rfsq" / "v3"
    assert reg.resolve("rfsq@best").version == 2
    assert reg.resolve("rfsq@latest").version == 3
    assert reg.resolve("rfsq").version == 3
    assert reg.resolve("rfsq@1").spec == "rfsq@1"
    assert reg.resolve("rfsq@v2").aliases == ("best",)
    art = reg.resolve("rfsq@best")
    assert art.metrics["val/loss"] == 0.2
    assert art.config == {"num_layers": 8, "num_levels": 7}
    assert art.lineage == {"data_fingerprint": "abc123"}
    assert art.read_json("stats")["q99"] == [1.0] * 7
    index = json.loads((tmp_path / "registry.json").read_text())["artifacts"]["rfsq"]
    assert index["aliases"] == {"latest": 3, "best": 2}
    assert index["best_metric"] == "val/loss" and index["best_mode"] == "min"
    assert sorted(p.name for p in art.path.iterdir()) == [
        "config.json", "lineage.json", "metrics.json", "stats.json", "weights.safetensors",
    ]  # fmt: skip


def test_best_mode_max_and_ties_keep_earliest(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for acc in (0.7, 0.9, 0.9, float("nan")):
        reg.export("draft", _tensors(0), {}, {"val/acc": acc}, {}, best_metric="val/acc", best_mode="max")
    assert reg.resolve("draft@best").version == 2
    assert reg.resolve("draft@latest").version == 4
    with pytest.raises(RsdError, match=r"best is chosen by val/acc \(max\)"):
        reg.export("draft", _tensors(0), {}, {"val/acc": 1.0}, {}, best_metric="val/acc", best_mode="min")


def test_best_is_chosen_within_the_latest_versions_group(tmp_path: Path) -> None:
    """A draft distilled from a new main model is never beaten by a better-scoring draft of the old one."""
    reg = Registry(tmp_path)
    for acc, main_spec in [(0.9, "main@1"), (0.5, "main@2"), (0.6, "main@2")]:
        reg.export("draft", _tensors(0), {}, {"val/acc": acc}, {"main": main_spec}, best_metric="val/acc",
                   best_mode="max", best_group=f"main={main_spec}")
    assert reg.resolve("draft@best").version == 3
    reg.export("draft", _tensors(0), {}, {"val/acc": 0.1}, {}, best_metric="val/acc", best_mode="max",
               best_group="main=main@1")
    assert reg.resolve("draft@best").version == 1  # back in main@1's group, 0.9 is the best


def test_no_best_metric_means_no_best_alias(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.export("main", _tensors(0), {}, {}, {})
    with pytest.raises(RsdError, match="no 'best' alias"):
        reg.resolve("main@best")


def test_tensor_round_trip_is_exact(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    shared = torch.arange(12.0)
    tensors = {**_tensors(7), "view_a": shared[:6], "view_b": shared[6:]}
    art = reg.export("rfsq", tensors, {}, {}, {})
    loaded = art.load_tensors()
    assert loaded.keys() == tensors.keys()
    for key, tensor in tensors.items():
        assert loaded[key].dtype == tensor.dtype and torch.equal(loaded[key], tensor), key


def test_identity_is_a_digest_of_the_tensors_not_of_the_file(tmp_path: Path) -> None:
    """The same weights exported twice are one model (an eval resumed after a re-export is not refused), though the
    files differ in their metadata; another tensor, or the same bytes under another dtype, is another model."""
    reg = Registry(tmp_path)
    first, again = _export(reg, loss=1.0), _export(reg, loss=1.0)
    files = [(art.path / registry_module.WEIGHTS_FILE).read_bytes() for art in (first, again)]
    assert files[0] != files[1]  # version 1 and 2 in __metadata__
    digests = [registry_module.weights_sha256(art.path) for art in (first, again)]
    assert digests[0] == digests[1] and len(digests[0]) == 64
    assert first.identity() == f"rfsq@1 sha256:{digests[0][:16]}" and again.identity().endswith(digests[0][:16])
    changed = {**_tensors(1000), "scale": torch.tensor(0.25, dtype=torch.float64)}
    other = reg.export("other", changed, {}, {}, {})
    retyped = {**_tensors(1000), "codes": _tensors(1000)["codes"].view(torch.float64)}
    same_bytes = reg.export("other", retyped, {}, {}, {})
    assert len({digests[0], *(registry_module.weights_sha256(a.path) for a in (other, same_bytes))}) == 3
    (other.path / registry_module.WEIGHTS_FILE).write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{oops")
    with pytest.raises(RsdError, match="weights.safetensors: not a safetensors file"):
        other.identity()


def test_crash_during_export_leaves_index_and_versions_intact(tmp_path: Path, monkeypatch) -> None:
    reg = Registry(tmp_path)
    _export(reg, loss=0.5)
    index_before = (tmp_path / "registry.json").read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(registry_module.os, "rename", crash)
    with pytest.raises(OSError, match="simulated"):
        _export(reg, loss=0.1)
    monkeypatch.undo()
    assert (tmp_path / "registry.json").read_text() == index_before
    assert sorted(p.name for p in (tmp_path / "rfsq").iterdir()) == ["v1"]  # temp folder removed
    assert reg.resolve("rfsq@best").version == 1
    assert torch.equal(reg.resolve("rfsq@1").load_tensors()["codes"], _tensors(500)["codes"])

    monkeypatch.setattr(registry_module.os, "replace", crash)  # crash while swapping the index
    with pytest.raises(OSError, match="simulated"):
        _export(reg, loss=0.1)
    monkeypatch.undo()
    assert (tmp_path / "registry.json").read_text() == index_before
    assert not list(tmp_path.glob(".registry-*"))  # no temp index left behind
    assert reg.versions("rfsq") == [1]  # v2 folder exists on disk but is not indexed ...
    assert _export(reg, loss=0.3).version == 3  # ... and its number is never reused


def test_stale_temp_folder_from_a_killed_export_is_ignored_and_cleaned(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _export(reg)
    stale = tmp_path / "rfsq" / ".tmp-v2-killed"
    stale.mkdir()
    (stale / "weights.safetensors").write_bytes(b"half")
    assert [a.version for a in reg.artifacts()] == [1]
    assert _export(reg).version == 2
    assert not stale.exists()


def test_bad_input_fails_before_writing(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RsdError, match="not JSON serialisable"):
        reg.export("rfsq", _tensors(0), {"optimizer": object()}, {}, {})
    with pytest.raises(RsdError, match="best metric 'val/loss' not in metrics"):
        reg.export("rfsq", _tensors(0), {}, {"train/loss": 1.0}, {}, best_metric="val/loss")
    with pytest.raises(RsdError, match="bad artifact name"):
        reg.export("rfsq@2", _tensors(0), {}, {}, {})
    with pytest.raises(RsdError, match="clash"):
        reg.export("rfsq", _tensors(0), {}, {}, {}, extra_json={"config": {}})
    assert not (tmp_path / "rfsq").exists()
    assert not (tmp_path / "registry.json").exists()


def test_unknown_name_version_and_alias_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    _export(reg)
    _export(reg, name="draft")
    with pytest.raises(RsdError, match=r"unknown artifact name 'main' .*known: draft, rfsq"):
        reg.resolve("main@best")
    with pytest.raises(RsdError, match=r"rfsq@7: no such version \(versions: \[1\]\)"):
        reg.resolve("rfsq@7")
    with pytest.raises(RsdError, match="unknown alias or version"):
        reg.resolve("rfsq@newest")
    with pytest.raises(RsdError, match="unknown artifact name 'rfsq'.*known: none"):
        Registry(tmp_path / "empty").resolve("rfsq")


def test_corrupted_index_and_missing_files_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    art = _export(reg)
    (art.path / "weights.safetensors").unlink()
    with pytest.raises(RsdError, match=r"rfsq@1: weights file .*weights.safetensors is missing"):
        reg.resolve("rfsq@1").load_tensors()
    with pytest.raises(RsdError, match="no nope.json"):
        art.read_json("nope")
    (tmp_path / "registry.json").write_text('{"format": 1, "artifacts": {"rfsq": ')
    with pytest.raises(RsdError, match=r"corrupted .*registry.json: Expecting value: line 1"):
        reg.resolve("rfsq")
    with pytest.raises(RsdError, match="corrupted"):  # an export refuses to overwrite a broken index
        _export(reg)
    (tmp_path / "registry.json").write_text("[1, 2]")
    with pytest.raises(RsdError, match="expected a JSON object"):
        reg.names()


def test_env_var_sets_default_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("RSD_CHECKPOINTS", str(tmp_path / "ckpts"))
    assert Registry().root == tmp_path / "ckpts"
    monkeypatch.delenv("RSD_CHECKPOINTS")
    assert Registry().root == Path("checkpoints")


def _export_many(root: str, worker: int, count: int) -> None:
    reg = Registry(root)
    for i in range(count):
        reg.export("rfsq", {"w": torch.full((4,), float(worker * 100 + i))}, {}, {"val/loss": 1.0 + i}, {},
                   best_metric="val/loss")  # fmt: skip


def test_concurrent_exports_from_two_processes_all_land(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_export_many, args=(str(tmp_path), w, 5)) for w in (1, 2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(timeout=60)
        assert process.exitcode == 0
    reg = Registry(tmp_path)
    assert reg.versions("rfsq") == list(range(1, 11))
    values = {float(art.load_tensors()["w"][0]) for art in reg.artifacts("rfsq")}
    assert values == {float(w * 100 + i) for w in (1, 2) for i in range(5)}
    assert reg.resolve("rfsq@best").metrics["val/loss"] == 1.0


def test_cli_list_and_show(tmp_path: Path, capsys) -> None:
    reg = Registry(tmp_path)
    _export(reg, loss=0.5)
    _export(reg, loss=0.25)
    assert main(["--root", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "aliases", "created", "metrics", "lineage"]
    assert lines[2].split()[:3] == ["rfsq", "2", "latest,best"]
    assert "val/loss=0.25" in lines[2] and "data_fingerprint=abc123" in lines[2]
    assert main(["--root", str(tmp_path), "show", "rfsq@best"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("rfsq@2  (latest, best)")
    assert '"num_levels": 7' in out and '"val/loss": 0.25' in out
    with pytest.raises(RsdError, match="unknown artifact name"):
        main(["--root", str(tmp_path), "show", "draft"])
    assert main(["--root", str(tmp_path / "none"), "list"]) == 0
    assert "no artifacts" in capsys.readouterr().out
    assert main(["list", "--root", str(tmp_path)]) == 0  # --root after the command works too
    assert "val/loss=0.25" in capsys.readouterr().out
    assert main(["show", "rfsq@1", "--root", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("rfsq@1")
    assert main(["--root", str(tmp_path / "none"), "list", "--root", str(tmp_path)]) == 0  # the later one wins
    assert "rfsq" in capsys.readouterr().out


def test_registry_subcommand_via_package_cli(tmp_path: Path, capsys, monkeypatch) -> None:
    from rsd_pl.__main__ import main as rsd_main

    monkeypatch.setenv("RSD_CHECKPOINTS", str(tmp_path))
    assert rsd_main(["registry", "show", "rfsq"]) == 1
    assert "unknown artifact name 'rfsq'" in capsys.readouterr().err
    assert os.environ["RSD_CHECKPOINTS"] == str(tmp_path)
