"""`suites-table`: every suite's evaluation side by side, on run folders the tests write in eval's own log format."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_report import _write, realistic_log

from rsd_pl.errors import RsdError
from rsd_pl.eval import suites_table
from rsd_pl.eval.report import build_report
from rsd_pl.eval.stats import mean_rate_interval, succeeded


@pytest.fixture
def root(tmp_path):
    """Two suites evaluated as the protocol runs them: l1 and ar_exit on trials 0-7, the other modes on 0-3; and
    LIBERO-PRO's language perturbation of libero_spatial on trials 0-3 (every second success of the clean run lost)."""
    records = [r for r in realistic_log(trials=8, seed=3)
               if r["mode"] in ("l1", "ar_exit") or r["trial"] < 4]
    for suite in ("libero_spatial", "libero_object"):
        (tmp_path / suite / "eval").mkdir(parents=True)
        _write(tmp_path / suite / "eval", [r for r in records if r["suite"] == suite])
    pro = []
    for i, r in enumerate(r for r in records if r["suite"] == "libero_spatial" and r["trial"] < 4):
        lost = r["status"] == "success" and i % 2 == 0
        pro.append({**r, "suite": "libero_spatial_lan", "status": "timeout" if lost else r["status"],
                    "success": False if lost else r["success"]})
    (tmp_path / "libero_spatial" / "pro").mkdir()
    _write(tmp_path / "libero_spatial" / "pro", pro)
    return tmp_path, records, pro


def test_rows_equal_each_suites_own_report_and_the_average_is_the_papers(root):
    folder, records, _ = root
    out = suites_table.write(folder)
    table = json.loads((folder / "suites.json").read_text())
    assert list(table["suites"]) == ["libero_spatial", "libero_object"]  # the papers' order
    for suite, row in table["suites"].items():
        report = build_report([r for r in records if r["suite"] == suite])
        for mode, m in report["modes"].items():
            assert (row["modes"][mode]["successes"], row["modes"][mode]["trials"]) == (m["successes"], m["trials"])
            assert row["modes"][mode]["p50_ms"] == pytest.approx(m["latency_ms"]["p50"])
        speed = next(s for s in report["speedups"] if s["slow"] == "ar_exit")
        assert row["speculative_over_ar_exit"]["p50_ratio"] == pytest.approx(speed["p50_latency_ratio"])
        assert row["modes"]["l1"]["trials"] == 2 * row["modes"]["ar"]["trials"]  # the long modes ran 0-7
    average = table["average"]["l1"]
    rates = [table["suites"][s]["modes"]["l1"]["rate"] for s in table["suites"]]
    assert average["rate"] == pytest.approx(np.mean(rates))
    l1 = [r for r in records if r["mode"] == "l1"]
    counts = [(sum(succeeded(r) for r in l1 if r["suite"] == s), sum(r["suite"] == s for r in l1))
              for s in table["suites"]]
    assert counts[0][1] != counts[1][1]  # the suites ran different numbers of trials: the interval is the mean's
    assert average["ci"] == pytest.approx(list(mean_rate_interval(counts)[1:]))
    assert average["ci"][0] < average["rate"] < average["ci"][1]
    assert (average["successes"], average["trials"]) == (sum(succeeded(r) for r in l1), len(l1))
    vs_ar = table["suites"]["libero_spatial"]["modes"]["l1"]["vs_ar"]  # paired on trials 0-3 only
    assert vs_ar["episodes"] == table["suites"]["libero_spatial"]["modes"]["ar"]["trials"]
    vs_l1 = table["suites"]["libero_spatial"]["modes"]["ar_exit"]["vs_l1"]  # the two long modes: trials 0-7
    assert vs_l1["episodes"] == table["suites"]["libero_spatial"]["modes"]["l1"]["trials"]
    l1_wins = {(r["task_id"], r["trial"]) for r in records if r["suite"] == "libero_spatial" and r["mode"] == "l1"
               and succeeded(r)}
    exit_wins = {(r["task_id"], r["trial"]) for r in records if r["suite"] == "libero_spatial"
                 and r["mode"] == "ar_exit" and succeeded(r)}
    assert vs_l1["difference"] == pytest.approx((len(exit_wins) - len(l1_wins)) / vs_l1["episodes"])
    assert table["average"]["ar_exit"]["vs_l1"]["episodes"] == len([r for r in records if r["mode"] == "l1"])
    text = out.read_text()
    assert "## Against `l1`, same episodes" in text
    assert "| OpenVLA-OFT (published) | 97.6 | 98.4 | 97.1 |" in text and "## Per task: libero_object" in text
    assert (folder / "suites.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_libero_pro_is_paired_with_the_clean_run_on_the_same_task_and_trial(root):
    folder, records, pro = root
    table = suites_table.build(folder)
    rows = {(r["perturbation"], r["mode"]): r for r in table["pro"]}
    assert {p for p, _ in rows} == {"lan"} and {m for _, m in rows} == {"l1", "parallel", "ar", "ar_exit",
                                                                          "speculative"}
    for (_, mode), row in rows.items():
        clean = [r for r in records if r["suite"] == "libero_spatial" and r["mode"] == mode and r["trial"] < 4]
        perturbed = [r for r in pro if r["mode"] == mode]
        assert row["clean"]["successes"] == sum(succeeded(r) for r in clean)
        assert row["perturbed"]["successes"] == sum(succeeded(r) for r in perturbed) < row["clean"]["successes"]
        assert row["vs_clean"]["episodes"] == len(clean) and row["vs_clean"]["difference"] < 0
    assert all(row["planned"] == row["perturbed"]["trials"] for row in rows.values())
    text = suites_table.markdown(table)
    assert "## LIBERO-PRO: clean against perturbed" in text and "partial" not in text.split("| suite |")[-1]


def test_a_libero_pro_perturbation_still_under_way_is_marked_partial(root):
    """The object perturbation has run task 0 only; the language one every task: only the first is partial."""
    folder, records, pro = root
    started = [{**r, "suite": "libero_spatial_object"} for r in pro if r["task_id"] == 0]
    _write(folder / "libero_spatial" / "pro", pro + started)
    table = suites_table.build(folder)
    rows = {(r["perturbation"], r["mode"]): r for r in table["pro"]}
    for mode in ("l1", "ar"):
        planned = sum(1 for r in pro if r["mode"] == mode)
        assert rows["lan", mode]["planned"] == rows["object", mode]["planned"] == planned
        done = sum(1 for r in started if r["mode"] == mode)
        assert 0 < rows["object", mode]["perturbed"]["trials"] == done < planned
    lines = suites_table.markdown(table).splitlines()
    assert any(f"| libero_spatial | object (partial: {done} of {planned}) | ar |" in line for line in lines)
    assert not any("| lan (partial" in line for line in lines)
    suites_table.write(folder)
    assert (folder / "suites_pro.png").stat().st_size > 10_000
    assert "(suites_pro.png)" in (folder / "suites.md").read_text()


def test_bad_run_folders_are_refused(tmp_path):
    with pytest.raises(RsdError, match="no <suite>/eval/episodes.jsonl below it"):
        suites_table.build(tmp_path)
    (tmp_path / "libero_goal" / "eval").mkdir(parents=True)
    _write(tmp_path / "libero_goal" / "eval", [r for r in realistic_log(trials=1) if r["suite"] == "libero_object"])
    with pytest.raises(RsdError, match="no episode of suite libero_goal"):
        suites_table.build(tmp_path)
    with pytest.raises(RsdError, match="no such folder"):
        suites_table.build(tmp_path / "nope")


def test_the_blind_replay_floor_is_a_row_paired_on_the_same_episodes(root):
    folder, records, _ = root
    clean = [r for r in records if r["suite"] == "libero_object" and r["mode"] == "l1" and r["trial"] < 4]
    replay = [{"suite": "libero_object", "task_id": r["task_id"], "trial": r["trial"], "mode": "replay",
               "success": True, "status": "success", "chunk_latency_ms": [], "latency_ms": {}, "steps": 100}
              for r in clean]
    (folder / "libero_object" / "replay").mkdir()
    _write(folder / "libero_object" / "replay", replay)
    table = suites_table.build(folder)
    row = table["suites"]["libero_object"]["modes"]["replay"]
    assert (row["successes"], row["trials"]) == (len(replay), len(replay))
    vs_l1 = row["vs_l1"]
    assert vs_l1["episodes"] == len(clean)
    assert vs_l1["difference"] == pytest.approx(1 - sum(succeeded(r) for r in clean) / len(clean))
    assert "replay" not in table["suites"]["libero_spatial"]["modes"]
    text = suites_table.markdown(table)
    assert "`replay`: the blind floor" in text and "| replay | - | " in text


def test_the_blind_replay_on_a_libero_pro_suite_is_a_row_of_its_comparison(root):
    """The replay on libero_spatial and libero_spatial_lan (new placements: it loses task 0) pairs like a mode. It
    ran trials 0-7 where the evaluation ran 0-3: each step's plan is its own, so neither is partial."""
    folder, records, _ = root
    clean = [r for r in records if r["suite"] == "libero_spatial" and r["mode"] == "l1"]
    assert {r["trial"] for r in clean} == set(range(8))

    def replay(suite, lost_task):
        return [{"suite": suite, "task_id": r["task_id"], "trial": r["trial"], "mode": "replay",
                 "success": r["task_id"] != lost_task, "status": "success" if r["task_id"] != lost_task else "timeout",
                 "chunk_latency_ms": [], "latency_ms": {}, "steps": 100} for r in clean]

    (folder / "libero_spatial" / "replay").mkdir()
    _write(folder / "libero_spatial" / "replay", replay("libero_spatial", None) + replay("libero_spatial_lan", 0))
    table = suites_table.build(folder)
    assert table["suites"]["libero_spatial"]["modes"]["replay"]["trials"] == len(clean)  # the clean rows only
    row = {(r["perturbation"], r["mode"]): r for r in table["pro"]}["lan", "replay"]
    lost = sum(1 for r in clean if r["task_id"] == 0)
    assert row["clean"]["successes"] == len(clean) and row["perturbed"]["successes"] == len(clean) - lost > 0
    assert row["vs_clean"]["reference_only"] == lost and row["planned"] == len(clean)
    rows = {(r["perturbation"], r["mode"]): r for r in table["pro"]}
    assert rows["lan", "l1"]["planned"] == rows["lan", "l1"]["perturbed"]["trials"] < len(clean)
    assert "| libero_spatial | lan | replay |" in suites_table.markdown(table)


def test_the_paraphrase_at_the_clean_init_states_is_a_perturbation_of_its_own(root):
    """`_paraphrase` (l1 only here, every episode a success) is paired with clean like LIBERO-PRO's own, and listed
    right after `_lan`, whose control it is."""
    folder, records, pro = root
    words = [{**r, "suite": "libero_spatial_paraphrase", "status": "success", "success": True}
             for r in pro if r["mode"] == "l1"]
    _write(folder / "libero_spatial" / "pro", pro + words)
    table = suites_table.build(folder)
    rows = {(r["perturbation"], r["mode"]): r for r in table["pro"]}
    row = rows["paraphrase", "l1"]
    assert row["perturbed"]["successes"] == row["perturbed"]["trials"] == row["planned"] == len(words)
    assert row["clean"]["successes"] < len(words)
    assert row["vs_clean"]["difference"] == pytest.approx(1 - row["clean"]["successes"] / len(words))
    assert ("paraphrase", "ar") not in rows
    text = suites_table.markdown(table)
    assert text.index("| libero_spatial | lan | ar |") < text.index("| libero_spatial | paraphrase | l1 |")


def test_libero_pro_rows_of_several_suites_are_pooled_into_an_all_suites_row(root):
    """Each suite's pairs (same task and trial) together: one McNemar test over all of them, never a mean of rates."""
    folder, records, pro = root
    objects = [{**r, "suite": "libero_object_lan", "status": "success", "success": True}
               for r in records if r["suite"] == "libero_object" and r["trial"] < 4]
    (folder / "libero_object" / "pro").mkdir()
    _write(folder / "libero_object" / "pro", objects)
    table = suites_table.build(folder)
    rows = {(r["suite"], r["perturbation"], r["mode"]): r for r in table["pro"]}
    for mode in ("l1", "ar_exit", "speculative"):
        spatial, obj = rows["libero_spatial", "lan", mode], rows["libero_object", "lan", mode]
        pooled = rows[suites_table.ALL_SUITES, "lan", mode]
        assert pooled["perturbed"]["trials"] == spatial["perturbed"]["trials"] + obj["perturbed"]["trials"]
        assert pooled["clean"]["successes"] == spatial["clean"]["successes"] + obj["clean"]["successes"]
        assert pooled["perturbed"]["successes"] == spatial["perturbed"]["successes"] + obj["perturbed"]["successes"]
        mine = [succeeded(r) for r in pro if r["mode"] == mode] + [True] * obj["perturbed"]["trials"]
        clean = [succeeded(r) for r in records if r["mode"] == mode and r["trial"] < 4
                 and r["suite"] in ("libero_spatial", "libero_object")]
        assert pooled["vs_clean"]["difference"] == pytest.approx((sum(mine) - sum(clean)) / len(mine))
    assert not [key for key in rows if key[0] == suites_table.ALL_SUITES and key[1] != "lan"]
    suites_table.write(folder)
    assert "| all suites | lan | l1 |" in (folder / "suites.md").read_text()
