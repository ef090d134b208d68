"""The triaged review queue and the audit mode, on the review screen (Textual's Pilot) and the session.

The workspace is the issue's scenario scaled down: the real `overlap` stage runs on synthetic
embeddings where most benchmark samples have one planted copy in the review band among several
look-alikes (noise pairs in the band too), a few have only look-alikes, and a few copies are so close
that the rule decides them by itself. The oracle reviewer knows the planted copies.
"""

from __future__ import annotations

import asyncio
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy.stats import binomtest

from _overlap_helpers import make_workspace
from clipcurate.core.imageload import MediaLoader
from clipcurate.core.workspace import Workspace
from clipcurate.review import ReviewSession, SORTS, decisions
from clipcurate.review.app import ReviewApp

SIZE = (120, 30)


def _plants(seed: int = 3):
    """(plants for make_workspace, the copies as (benchmark, index, shard, row)). cifar10: 16 samples
    with a copy in the band (CLIP 0.88-0.95) and 2-6 look-alikes (0.85-0.93); 4 samples with
    look-alikes only; 2 samples with an automatic copy (>= 0.95) and 2 band look-alikes."""
    rng = np.random.default_rng(seed)
    plants, copies, slot = [], set(), iter(range(600))

    def place(bench, idx, cos):
        s = next(slot)
        plants.append((bench, idx, s // 200, s % 200, float(cos)))
        return s // 200, s % 200

    for idx in range(22):
        if idx < 16:
            copies.add(("cifar10", idx, *place("cifar10", idx, rng.uniform(0.88, 0.95))))
        elif idx >= 20:
            copies.add(("cifar10", idx, *place("cifar10", idx, rng.uniform(0.96, 0.99))))
        for _ in range(int(rng.integers(2, 7)) if idx < 20 else 2):
            place("cifar10", idx, rng.uniform(0.85, 0.93))
    return plants, copies


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    from clipcurate.overlap import run as overlap_run

    root = tmp_path_factory.mktemp("triage") / "ws"
    ws = Workspace(root).create()
    plants, copies = _plants()
    data = make_workspace(root, plants=plants, benches={"cifar10": 30})
    overlap_run(ws)
    truth = {(data["pool_uids"][si * 200 + row], b, i) for b, i, si, row in copies}
    return root, truth


@pytest.fixture
def tws(template, tmp_path):
    root, truth = template
    shutil.copytree(root, tmp_path / "ws")
    return Workspace(tmp_path / "ws"), truth


def make_app(ws, **kw) -> ReviewApp:
    return ReviewApp(ReviewSession(ws, "oracle", **kw), MediaLoader(ws, decode_images=False), images="none")


def oracle_key(pair, truth) -> str:
    return "y" if (pair["pool_uid"], pair["benchmark"], int(pair["bench_index"])) in truth else "n"


async def _settle(app, truth) -> int:
    """Press the oracle's key until no pair matters; the number of decisions."""
    n = 0
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        s = app.session
        while s.triage.matter and n <= len(s):
            await pilot.press(oracle_key(s.pair(), truth))
            n += 1
        assert "matter 0" in str(app.query_one("#topbar").render())
        await pilot.press("q")
    return n


def _splits(ws):
    from clipcurate.overlap import refresh_splits

    refresh_splits(ws)
    return {(r["benchmark"], r["bench_index"]): r["split"]
            for r in pq.read_table(ws.root / "overlap" / "splits.parquet").to_pylist()}


@pytest.mark.slow
def test_triage_settles_every_sample_in_at_most_half_the_decisions(tws, tmp_path):
    ws, truth = tws
    before = _splits(ws)
    assert sum(v == "unreviewed" for v in before.values()) == 20
    shutil.copytree(ws.root, tmp_path / "ws2")
    ws2 = Workspace(tmp_path / "ws2")
    n_score = asyncio.run(_settle(make_app(ws, sort="score"), truth))
    n_triage = asyncio.run(_settle(make_app(ws2, sort="triage"), truth))
    queued = pq.read_table(ws.root / "overlap" / "review_queue.parquet").num_rows
    print(f"queue {queued} pairs: score order {n_score} decisions, triage {n_triage}")
    assert n_triage * 2 <= n_score
    # both settle every sample, the same way: planted copies overlap, the look-alike-only samples clean
    a, b = _splits(ws), _splits(ws2)
    assert a == b and "unreviewed" not in a.values()
    assert {k for k, v in a.items() if v == "overlap"} == {(bb, i) for _, bb, i in truth}


async def _settle_by_sample(app, truth) -> tuple[int, int, int]:
    """The oracle in the sample view (triage order): per sample, `x` when no candidate shown is a
    planted copy, else move the highlight to the copy and `y`. (verdict keys, all keys, records)."""
    actions = keys = 0
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        s = app.session
        await pilot.press("v")
        keys += 1
        assert app.group_mode and app.query_one("#group").display
        while s.triage.matter and actions <= len(s):
            shown = [s.pair(i) for i in s.group()]
            assert [t for t in app._tiles] == [p["pair_id"] for p in shown]  # every candidate on screen
            copy = [p["pair_id"] for p in shown if oracle_key(p, truth) == "y"]
            if not copy:
                await pilot.press("x")
            else:
                while s.pair_id != copy[0]:
                    await pilot.press("j")
                    keys += 1
                assert app._tiles[copy[0]].has_class("-current")
                await pilot.press("y")
            actions += 1
            keys += 1
        assert "matter 0" in str(app.query_one("#topbar").render())
        records = len(decisions.load(app.session.ws)[0])
        await pilot.press("q")
    return actions, keys, records


@pytest.mark.slow
def test_sample_view_settles_every_sample_in_at_most_half_the_actions(tws, tmp_path):
    ws, truth = tws
    shutil.copytree(ws.root, tmp_path / "ws2")
    ws2 = Workspace(tmp_path / "ws2")
    n_score = asyncio.run(_settle(make_app(ws, sort="score"), truth))
    actions, keys, records = asyncio.run(_settle_by_sample(make_app(ws2, sort="triage"), truth))
    print(f"score order {n_score} decisions; sample view {actions} actions ({keys} keys), {records} pair verdicts")
    assert actions * 2 <= n_score
    assert records > actions  # a rejection writes one record per pair shown
    # the splits follow after quit, exactly as after one pair at a time
    a, b = _splits(ws), _splits(ws2)
    assert a == b and "unreviewed" not in b.values()
    assert {k for k, v in b.items() if v == "overlap"} == {(bb, i) for _, bb, i in truth}


def test_sample_view_rejects_all_shown_and_undo_takes_them_back(tws):
    ws, truth = tws
    s = ReviewSession(ws, "ana", sort="triage")
    total = s.triage.matter
    key = s.triage.sample_of[s.pair_id]
    shown = [s.pair(i)["pair_id"] for i in s.group()]
    assert set(shown) == set(s.triage.pairs_of[key]) and len(shown) > 1
    recs = s.reject_group()
    assert [r["pair_id"] for r in recs] == shown and {r["decision"] for r in recs} == {"not_duplicate"}
    assert s.triage.matter == total - len(shown) and s.triage.matter_of[key] == 0
    assert s.triage.sample_of[s.pair_id] != key  # on to the next sample
    # the log holds one ordinary record per pair, which every reader takes as it is
    eff = decisions.effective(ws)
    assert all(eff[p]["verdict"] == "not_duplicate" for p in shown)
    # another session's vote on one of them survives this session's undo of the group
    other = ReviewSession(ws, "ana", sort="score")
    other.goto(other.view_pos[shown[0]])
    other.decide("duplicate")
    s.undo()
    assert s.pair_id == shown[0] and s.triage.sample_of[s.pair_id] == key
    eff = decisions.effective(ws)
    assert eff[shown[0]]["verdict"] == "duplicate" and not any(p in eff for p in shown[1:])


def test_triage_order_skips_pairs_that_no_longer_matter(tws):
    ws, truth = tws
    s = ReviewSession(ws, "ana", sort="triage")
    total = s.triage.matter
    assert total == len(s) - 4  # the 2 samples with an automatic copy: their 4 band pairs never matter
    first = s.pair()
    key = (first["benchmark"], first["bench_index"])
    same = [s.pair(i) for i in range(len(s)) if (s.pair(i)["benchmark"], s.pair(i)["bench_index"]) == key]
    # one sample's pairs together, nearest the overlap threshold (highest CLIP here) first
    assert [p["pair_id"] for p in same] == [s.pair(i)["pair_id"] for i in range(len(same))]
    assert [p["score_clip"] for p in same] == sorted((p["score_clip"] for p in same), reverse=True)
    s.decide("not_duplicate")
    assert s.triage.matter == total - 1 and s.pair()["pair_id"] == same[1]["pair_id"]
    s.decide("duplicate")  # the sample is overlap now: its other pairs are skipped
    assert s.triage.matter == total - len(same)
    assert (s.pair()["benchmark"], s.pair()["bench_index"]) != key
    s.undo()  # the sample is open again
    assert s.triage.matter == total - 1 and s.pair()["pair_id"] == same[1]["pair_id"]
    # filter to one benchmark sample
    s.set_view("triage", sample=key)
    assert len(s) == len(same) and s.matter() == len(same) - 1
    with pytest.raises(Exception, match="sort 'nope'"):
        s.set_view("nope")


def test_sort_keys_jump_and_sample_filter_on_screen(tws):
    ws, _ = tws

    async def run():
        app = make_app(ws, sort="score")
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            for i, name in enumerate(SORTS):
                await pilot.press(str(i + 1))
                assert app.session.sort == name
                assert f"sort {name}" in str(app.query_one("#topbar").render())
            await pilot.press("1")  # triage
            pair = app.session.pair()
            await pilot.press("g")
            assert app.session.sample == (pair["benchmark"], pair["bench_index"])
            assert f"benchmark {pair['benchmark']} #{pair['bench_index']}" in str(app.query_one("#topbar").render())
            assert all(app.session.pair(i)["bench_index"] == pair["bench_index"] for i in range(len(app.session)))
            await pilot.press("g")
            assert app.session.sample is None and len(app.session) == app.session.queue.n
            await pilot.press("a")  # audit mode and back: the triage order again
            assert app.session.audit and app.session.sort == "score"
            await pilot.press("a")
            assert not app.session.audit and app.session.sort == "triage"

    asyncio.run(run())


def test_audit_override_flows_into_splits_and_decontam_and_status(tws, cli, monkeypatch):
    import clipcurate.cli.review as cr

    ws, truth = tws
    pairs = pq.read_table(ws.root / "overlap" / "pairs.parquet").to_pylist()
    auto = [p for p in pairs if p["decision"] == "overlap"]
    assert len(auto) == 2
    target = auto[0]
    key = (target["benchmark"], target["bench_index"])
    assert _splits(ws)[key] == "overlap"
    # the sample's band look-alikes are decided first, so that overriding the rule makes it clean
    decisions.append(ws, [{"pair_id": p["pair_id"], "pool_uid": p["pool_uid"], "benchmark": p["benchmark"],
                           "bench_index": p["bench_index"], "decision": "not_duplicate", "reviewer": "bob"}
                          for p in pairs if (p["benchmark"], p["bench_index"]) == key and p["decision"] == "review"])
    seen = {}

    def screen(ws_, session, images, prefetch):
        async def run():
            app = ReviewApp(session, MediaLoader(ws_, decode_images=False), images="none")
            async with app.run_test(size=SIZE) as pilot:
                await pilot.pause()
                assert "AUDIT" in str(app.query_one("#topbar").render())
                seen["n"] = len(session)
                # browse to the automatic overlap, check what the screen says about it, override it
                while session.pair_id != target["pair_id"]:
                    await pilot.press("j")
                assert "rule: overlap" in str(app.query_one("#signals").render())
                await pilot.press("n")
                # and agree with the rule on the first automatic clean pair
                session.goto(next(i for i in range(len(session)) if session.pair(i)["decision"] == "clean"))
                await pilot.press("n")
                await pilot.press("q")

        asyncio.run(run())
        return session.changed

    monkeypatch.setattr(cr, "open_app", screen)
    monkeypatch.setattr(cr, "_interactive", lambda: True)
    r = cli("-w", ws.root, "review", "--audit", "--reviewer", "ana")
    assert r.code == 0, r.err
    assert "overlap splits and decontam list refreshed" in r.err
    # the 2 automatic overlaps, and the nearest pool sample of each of the 8 samples without a pair (clean)
    assert seen["n"] == 2 + (30 - 22)
    splits = {(s["benchmark"], s["bench_index"]): s for s in
              pq.read_table(ws.root / "overlap" / "splits.parquet").to_pylist()}
    assert splits[key]["split"] == "clean" and splits[key]["decided_by"] == "human"
    de = {d["pool_uid"] for d in pq.read_table(ws.root / "overlap" / "decontam.parquet").to_pylist()}
    assert target["pool_uid"] not in de and auto[1]["pool_uid"] in de
    # review status: the audit's agreement with the rule, with the Clopper-Pearson interval
    r = cli("-w", ws.root, "review", "status", "--format", "json")
    audit = {a["automatic"]: a for a in json.loads(r.out)["audit"]}
    assert (audit["overlap"]["audited"], audit["overlap"]["agreed"]) == (1, 0)
    assert (audit["clean"]["audited"], audit["clean"]["agreed"]) == (1, 1)
    ci = binomtest(1, 1).proportion_ci(method="exact")
    assert audit["clean"]["ci_low"] == round(ci.low, 4) and audit["clean"]["ci_high"] == 1.0
    r = cli("-w", ws.root, "review", "status")
    assert r.code == 0 and "audit: people vs the rule" in r.out


def test_cli_sample_and_audit_errors_are_one_line(tws, cli, monkeypatch):
    import clipcurate.cli.review as cr

    ws, _ = tws
    monkeypatch.setattr(cr, "_interactive", lambda: True)
    r = cli("-w", ws.root, "review", "--sample", "cifar10")
    assert r.code == 2 and "BENCHMARK:INDEX" in r.err
    seen = {}
    monkeypatch.setattr(cr, "open_app", lambda ws_, session, images, prefetch: seen.update(
        n=len(session), sort=session.sort, sample=session.sample) or False)
    r = cli("-w", ws.root, "review", "--sample", "cifar10:3")
    assert r.code == 0, r.err
    assert seen["sample"] == ("cifar10", 3) and seen["sort"] == "triage"  # the default order
    (ws.root / "overlap" / "pairs.parquet").unlink()
    r = cli("-w", ws.root, "review", "--audit")
    assert r.code == 1 and "clipcurate overlap" in r.err and "Traceback" not in r.err


def test_pairs_that_matter_agree_with_the_unreviewed_splits(tws):
    """The screen's count and the splits' pending pairs are the same rule: after random votes
    (including rejections of the rule's overlaps), the samples with pairs that matter are exactly
    the unreviewed ones, and their counts are the pending_pairs."""
    ws, _ = tws
    rng = np.random.default_rng(7)
    pairs = pq.read_table(ws.root / "overlap" / "pairs.parquet").to_pylist()
    votes = [{"pair_id": p["pair_id"], "pool_uid": p["pool_uid"], "benchmark": p["benchmark"],
              "bench_index": p["bench_index"], "reviewer": "ana",
              "decision": "duplicate" if rng.random() < 0.1 else "not_duplicate"}
             for p in pairs if rng.random() < 0.5]
    decisions.append(ws, votes)
    _splits(ws)
    rows = pq.read_table(ws.root / "overlap" / "splits.parquet").to_pylist()
    pending = {(r["benchmark"], r["bench_index"]): r["pending_pairs"] for r in rows if r["split"] == "unreviewed"}
    s = ReviewSession(ws, "bob", sort="triage")
    matter = {k: n for k, n in s.triage.matter_of.items() if n}
    assert matter == pending and 0 < len(pending) < 20
    assert s.matter() == sum(pending.values())
