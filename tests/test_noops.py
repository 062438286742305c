"""OpenVLA-OFT's no-op dropping: `noop_mask`, `read_episodes(drop_noops=True)`, the two DataModules."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from rsd_pl.data.demo_writer import DemoWriter
from rsd_pl.data.libero_hdf5 import noop_mask, read_episodes
from rsd_pl.data.normalize import ActionNormalizer
from rsd_pl.data.synthetic import synthetic_demo
from rsd_pl.errors import RsdError
from rsd_pl.lit.action_data import ActionChunkDataModule, data_fingerprint
from rsd_pl.lit.vla_data import TokenizerBundle, VLADataModule

HEADER = dict(env_name="Synthetic", problem_info={"language_instruction": "put the bowl on the plate"},
              bddl_file_name="x.bddl", env_args={"image_size": 16})


def oft_is_noop(action, prev_action=None, threshold=1e-4):
    """OFT's `is_noop` (experiments/robot/libero/regenerate_libero_dataset.py), as its loop applies it."""
    if prev_action is None:
        return np.linalg.norm(action[:-1]) < threshold
    return np.linalg.norm(action[:-1]) < threshold and action[-1] == prev_action[-1]


def oft_keep(actions: np.ndarray) -> np.ndarray:
    kept: list[np.ndarray] = []
    keep = []
    for action in actions:
        noop = oft_is_noop(action, kept[-1] if kept else None)
        keep.append(not noop)
        if not noop:
            kept.append(action)
    return np.array(keep, dtype=bool)


def act(xyz_rot=(0.0,) * 6, gripper=-1.0) -> list[float]:
    return [*xyz_rot, gripper]


def test_noop_mask_hand_made_actions():
    actions = np.array([
        act(gripper=-1.0),                          # 0 zero at the start: dropped (norm test only)
        act((0.1, 0, 0, 0, 0, 0), -1.0),            # 1 moves: kept
        act(gripper=1.0),                           # 2 zero but the gripper closes: kept
        act(gripper=1.0),                           # 3 zero, gripper unchanged: dropped
        act((5e-5, 0, 0, 0, 0, 0), 1.0),            # 4 tiny motion: dropped
        act((0, 0, 0, 0, 0, 5e-5), 1.0),            # 5 tiny rotation: dropped
        act((2e-4, 0, 0, 0, 0, 0), 1.0),            # 6 above the threshold: kept
        act((0, 0, 0, 0, 2e-4, 0), 1.0),            # 7 rotation above the threshold: kept
        act(gripper=-1.0),                          # 8 zero, gripper opens: kept
        act(gripper=-1.0),                          # 9 zero, unchanged: dropped
    ])
    expected = [False, True, True, False, False, False, True, True, True, False]
    assert noop_mask(actions).tolist() == expected
    assert noop_mask(actions.astype(np.float32)).tolist() == expected
    assert noop_mask(actions, threshold=1e-5).tolist() == [False, True, True, False, True, True, True, True,
                                                            True, False]


def test_noop_mask_start_ignores_gripper_until_something_is_kept():
    # Nothing kept yet: a gripper change alone does not keep a zero step (OFT's prev_action is None).
    actions = np.array([act(gripper=-1.0), act(gripper=1.0), act((0.3, 0, 0, 0, 0, 0), 1.0), act(gripper=-1.0)])
    assert noop_mask(actions).tolist() == [False, False, True, True]
    assert noop_mask(np.array([act(), act(), act()])).tolist() == [False, False, False]


def test_noop_mask_matches_oft_loop_on_random_sparse_actions():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        actions = rng.uniform(-1, 1, (n, 7))
        actions[rng.random(n) < 0.5, :6] = 0.0
        actions[rng.random(n) < 0.2, :6] *= 1e-5
        actions[:, 6] = rng.choice([-1.0, 1.0], n, p=[0.7, 0.3])
        np.testing.assert_array_equal(noop_mask(actions), oft_keep(actions))


N = 20
NOOP_STEPS = [0, 4, 5, 11, 15]  # 0: start, 4/5: zero, 11: zero after the gripper change at 10, 15: 5e-5


def marked_demo(seed: int, with_noops: bool) -> dict:
    """N steps whose observations carry their step index t (to check alignment after dropping)."""
    demo = synthetic_demo(np.random.default_rng(seed), image_size=16)
    demo = {k: (v[:N] if k != "obs" else {o: a[:N].copy() for o, a in v.items()}) for k, v in demo.items()}
    rng = np.random.default_rng(100 + seed)
    actions = np.concatenate([rng.uniform(0.1, 0.5, (N, 6)), np.where(np.arange(N) < 10, -1.0, 1.0)[:, None]], 1)
    if with_noops:
        actions[[0, 4, 5, 10, 11], :6] = 0.0   # 10 is zero too, but the gripper changes there: kept
        actions[15, :6] = [5e-5, 0, 0, 0, 0, 0]
        actions[17, :6] = [0, 2e-4, 0, 0, 0, 0]  # kept
    demo["actions"] = actions
    t = np.arange(N)
    obs = demo["obs"]
    obs["ee_pos"][:, 0] = t
    obs["gripper_states"][:, 1] = 1000 + t
    obs["object_pos"][:, 5] = 2000 + t
    obs["agentview_rgb"][:, 0, 0, 0] = t
    obs["eye_in_hand_rgb"][:, 0, 0, 1] = 100 + t
    return demo


@pytest.fixture()
def noop_file(tmp_path):
    path = tmp_path / "libero_task_demo.hdf5"
    with DemoWriter(path, **HEADER) as writer:
        writer.add_demo(**marked_demo(0, with_noops=True))
        writer.add_demo(**marked_demo(1, with_noops=False))
        writer.add_demo(**marked_demo(2, with_noops=True))
    return path


def test_read_episodes_drop_noops_keeps_arrays_aligned(noop_file):
    plain = read_episodes(noop_file)
    dropped = read_episodes(noop_file, drop_noops=True)
    keep = np.setdiff1d(np.arange(N), NOOP_STEPS)
    assert [len(e) for e in plain] == [N, N, N]
    assert [len(e) for e in dropped] == [N - 5, N, N - 5]
    assert [e.attrs["noops_dropped"] for e in dropped] == [5, 0, 5]
    assert "noops_dropped" not in plain[0].attrs
    assert dropped[0].attrs["num_samples"] == N  # the file's count, untouched

    episode, full = dropped[0], plain[0]
    np.testing.assert_array_equal(episode.actions, full.actions[keep])
    # Specific rows: kept row 0 is step 1; row 2 is step 3, row 3 step 6 (4, 5 dropped);
    # row 7 is step 10 (zero motion, gripper change), row 8 step 12 (11 dropped); row 11 is step 16.
    for row, step in [(0, 1), (2, 3), (3, 6), (7, 10), (8, 12), (11, 16), (14, 19)]:
        assert episode.proprio[row, 0] == step
        assert episode.proprio[row, 7] == 1000 + step
        assert episode.object_pos[row, 5] == 2000 + step
        assert episode.images["agentview_rgb"][row, 0, 0, 0] == step
        assert episode.images["eye_in_hand_rgb"][row, 0, 0, 1] == 100 + step
        np.testing.assert_array_equal(episode.actions[row], full.actions[step])
    assert episode.actions[7, 6] == 1.0 and np.all(episode.actions[7, :6] == 0)
    np.testing.assert_array_equal(episode.proprio[:, 0], keep)
    np.testing.assert_array_equal(episode.images["agentview_rgb"][:, 0, 0, 0], keep)
    # No no-op left in a kept episode, and the untouched demo reads identically.
    assert noop_mask(episode.actions).all()
    np.testing.assert_array_equal(dropped[1].actions, plain[1].actions)
    np.testing.assert_array_equal(dropped[1].images["agentview_rgb"], plain[1].images["agentview_rgb"])


def test_all_noop_demo_raises_naming_it(tmp_path):
    path = tmp_path / "still.hdf5"
    demo = marked_demo(0, with_noops=False)
    with DemoWriter(path, **HEADER) as writer:
        writer.add_demo(**demo)
        writer.add_demo(**{**demo, "actions": np.concatenate([np.zeros((N, 6)), np.ones((N, 1))], 1)})
    assert [len(e) for e in read_episodes(path)] == [N, N]
    with pytest.raises(RsdError, match=r"still\.hdf5:data/demo_1.*no-op"):
        read_episodes(path, drop_noops=True)


def legacy_fingerprint(files) -> str:
    """The fingerprint as it was before drop_noops existed (existing lineage must not change)."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def test_phase1_fingerprint_and_fewer_chunks(noop_file):
    off = ActionChunkDataModule(str(noop_file), chunk_len=4, val_fraction=0.34, seed=0)
    on = ActionChunkDataModule(str(noop_file), chunk_len=4, val_fraction=0.34, seed=0, drop_noops=True)
    assert off.fingerprint() == legacy_fingerprint([noop_file]) == data_fingerprint([noop_file])
    assert on.fingerprint() != off.fingerprint()
    assert on.fingerprint() == data_fingerprint([noop_file], drop_noops=True)
    off.setup("fit")
    on.setup("fit")
    assert len(off.train_set) + len(off.val_set) == 3 * N
    assert len(on.train_set) + len(on.val_set) == 3 * N - 10


def test_phase2_fingerprint_and_dropped_samples(noop_file):
    off = VLADataModule(str(noop_file), chunk_len=4, val_fraction=0.34, use_object_pos=True)
    on = VLADataModule(str(noop_file), chunk_len=4, val_fraction=0.34, use_object_pos=True, drop_noops=True)
    assert off.fingerprint() == legacy_fingerprint([noop_file])
    assert on.fingerprint() != off.fingerprint()
    assert on.fingerprint() == ActionChunkDataModule(str(noop_file), drop_noops=True).fingerprint()

    # setup() with a stand-in tokenizer (codes are not under test): samples come from the kept steps only.
    def tokenize(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], x.shape[1], 2, 3, dtype=torch.long)

    normalizer = ActionNormalizer.fit(np.ones((4, 7)) * np.arange(4)[:, None], 7, source="test")
    for module in (off, on):
        module.tokenizer = TokenizerBundle(SimpleNamespace(tokenize=tokenize), normalizer, "rfsq@0")
        module.setup("fit")
    assert len(off.train_set) + len(off.val_set) == 3 * N
    assert len(on.train_set) + len(on.val_set) == 3 * N - 10
    samples = [on.train_set[i] for i in range(len(on.train_set))] + [on.val_set[i] for i in range(len(on.val_set))]
    steps = sorted(int(s["proprio"][0]) for s in samples)
    assert steps.count(4) == 1 and steps.count(0) == 1  # only the demo without no-ops has steps 0 and 4
    assert {int(s["frames"][0, 0, 0, 0]) for s in samples} == set(range(N))
    for s in samples:  # frame, proprio and object_pos of a sample come from the same step
        assert int(s["frames"][0, 0, 0, 0]) == int(s["proprio"][0]) == int(s["object_pos"][5]) - 2000


def test_token_codes_above_255_are_kept_exactly(noop_file):
    """Grouped layouts have up to 4,096 codes per token: the dataset's compact code store must hold them."""
    from rsd_pl.models.rfsq import ActionRFSQAE

    torch.manual_seed(0)
    tokenizer = ActionRFSQAE(chunk_len=4, latent_dim=4, num_layers=3, positions=2, group=4, hidden=8, num_hidden=1)
    data = VLADataModule(str(noop_file), chunk_len=4, val_fraction=0.34, use_object_pos=True)
    normalizer = ActionNormalizer.fit(np.ones((4, 7)) * np.arange(4)[:, None], 7, source="test")
    data.tokenizer = TokenizerBundle(tokenizer.eval(), normalizer, "rfsq@0")
    data.setup("fit")
    stored = torch.stack([data.train_set[i]["codes"] for i in range(len(data.train_set))])
    expected = tokenizer.tokenize(data.train_set.actions)
    assert int(expected.max()) > 255 and torch.equal(stored, expected)
