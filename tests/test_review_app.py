"""The review TUI, headless with Textual's Pilot: every key, undo, resume after quitting, text-only
mode, and SVG snapshots (pytest-textual-snapshot; update with `pytest --snapshot-update`)."""

from __future__ import annotations

import asyncio

import pytest

from clipcurate.review import decisions
from clipcurate.core.imageload import MediaLoader
from clipcurate.review import ReviewSession
from clipcurate.review.app import KEYMAP, ReviewApp, HelpScreen

from _review_helpers import build

SIZE = (140, 40)


@pytest.fixture(autouse=True)
def fixed_cell_size(monkeypatch):
    """textual-image sizes images from the terminal's cell size in pixels; pin the value it uses
    when stdout is not a terminal, so that `pytest -s` in a real terminal draws the same."""
    from textual_image._terminal import CellSize, get_cell_size

    monkeypatch.setattr(get_cell_size, "_result", CellSize(10, 20), raising=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    return build(tmp_path_factory.mktemp("review") / "ws", 12).root


@pytest.fixture
def rws(template, tmp_path):
    import shutil

    from clipcurate.core.workspace import Workspace

    shutil.copytree(template, tmp_path / "ws")
    return Workspace(tmp_path / "ws")


def make_app(ws, reviewer="ana", images="halfcell", **kw) -> ReviewApp:
    return ReviewApp(ReviewSession(ws, reviewer, **kw), MediaLoader(ws, decode_images=images != "none"),
                     images=images)


async def drawn(app, pilot, timeout=10.0):
    """Wait until the pair on screen is complete (images and texts of the current pair)."""
    for _ in range(int(timeout / 0.02)):
        if app.drawn_pair_id == app.session.pair_id:
            return
        await pilot.pause(0.02)
    raise AssertionError("pair never drawn")


def text_of(app, wid) -> str:
    w = app.query_one(wid)
    return str(w.render())


def log_decisions(ws):
    return [(r["decision"], r["pair_id"]) for r in decisions.load(ws)[0]]


@pytest.mark.slow
def test_every_key(rws):
    async def run():
        app = make_app(rws)
        ids = app.session.queue.pair_ids
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            assert "pair 1 / 12" in text_of(app, "#topbar")
            assert "my drawing of a circle" in text_of(app, "#pool-text")
            assert "label  circle" in text_of(app, "#bench-text")
            assert app.query_one("#pool-image").image is not None
            assert app.query_one("#bench-image").image is not None
            await pilot.press("y")
            await drawn(app, pilot)
            assert app.session.pos == 1 and "pair 2 / 12" in text_of(app, "#topbar")
            assert "saved: duplicate" in text_of(app, "#verdict")
            await pilot.press("n")  # → pair 3
            await pilot.press("s")  # → pair 4, pair 3 skipped
            await pilot.press("f")  # flag pair 4, stay
            await drawn(app, pilot)
            assert app.session.pos == 3 and "flagged" in text_of(app, "#verdict")
            assert log_decisions(rws) == [("duplicate", ids[0]), ("not_duplicate", ids[1]), ("skip", ids[2]),
                                          ("flag", ids[3])]
            await pilot.press("u")  # unflag, stay on 4
            assert app.session.pos == 3 and not app.session.state()["flagged"]
            await pilot.press("u")  # un-skip: back to 3
            assert app.session.pos == 2
            await pilot.press("u")  # undo the "not duplicate": back to 2, undecided again
            await drawn(app, pilot)
            assert app.session.pos == 1 and app.session.state()["vote"] is None
            assert "undecided" in text_of(app, "#verdict")
            for key, delta in (("j", 1), ("down", 1), ("right", 1), ("k", -1), ("up", -1), ("left", -1)):
                before = app.session.pos
                await pilot.press(key)
                assert app.session.pos == before + delta, key
            await pilot.press("end")
            assert app.session.pos == 11
            await pilot.press("home")
            assert app.session.pos == 0
            await pilot.press("o")  # sort: score → clip
            assert app.session.sort == "clip" and app.session.pair_id == ids[0]
            await pilot.press("b")  # benchmark: all → cifar10
            assert app.session.benchmarks == ["cifar10"] and len(app.session) == 6
            assert "benchmark cifar10" in text_of(app, "#topbar")
            await pilot.press("b", "b")  # → stl10 → all
            assert app.session.benchmarks == [] and len(app.session) == 12
            await pilot.press("i")  # only pairs with the CLIP score → all 12 have it
            assert app.session.signal == "clip" and len(app.session) == 12
            await pilot.press("i")  # → detector: 8 of 12 computed
            assert app.session.signal == "detector" and len(app.session) == 8
            assert "signal detector" in text_of(app, "#topbar")
            await pilot.press(*["i"] * 5)  # phash, dhash, keypoints, text, → all
            assert app.session.signal is None and len(app.session) == 12
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            help_text = str(app.screen.query_one("#help").render())
            for keys, _action, _label, text in KEYMAP:
                assert text in help_text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)
            await pilot.press("q")
        assert app.return_value is True  # this session wrote decisions
        return app

    asyncio.run(run())
    # what the log says after all that: only the first "duplicate" is left
    assert {p: v["verdict"] for p, v in decisions.effective(rws).items()} == {
        ReviewSession(rws, "ana").queue.pair_ids[0]: "duplicate"}


def test_resume_after_quitting(rws):
    async def session_one():
        app = make_app(rws)
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            await pilot.press("y", "n", "y")
            await pilot.press("q")

    async def session_two():
        app = make_app(rws)
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            assert app.session.pos == 3
            assert "pair 4 / 12" in text_of(app, "#topbar") and "decided 3/12" in text_of(app, "#topbar")
            await pilot.press("k")  # the previous pair shows the saved vote
            assert "your vote: duplicate" in text_of(app, "#verdict")
            await pilot.press("q")

    asyncio.run(session_one())
    asyncio.run(session_two())


def test_two_reviewers_and_automatic_votes_are_shown(rws):
    pid0 = ReviewSession(rws, "x").queue.pair_ids[0]
    decisions.append(rws, [{"pair_id": pid0, "decision": "duplicate", "reviewer": "demo", "source": "auto-demo"},
                           {"pair_id": pid0, "decision": "not_duplicate", "reviewer": "bob"}])

    async def run():
        app = make_app(rws)
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            line = text_of(app, "#verdict")
            assert "bob=not duplicate" in line and "demo=duplicate (automatic, auto-demo)" in line

    asyncio.run(run())


def test_text_only_mode(rws):
    async def run():
        app = make_app(rws, images="none")
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            assert "[image 48×48 JPEG]" in text_of(app, "#pool-image")
            assert "[image 48×48 PNG]" in text_of(app, "#bench-image")
            await pilot.press("y")
            assert len(decisions.load(rws)[0]) == 1

    asyncio.run(run())


def test_missing_images_are_a_line_not_a_crash(rws):
    (rws.root / "pool" / "shards" / "00000.tar").unlink()

    async def run():
        app = make_app(rws)
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            assert "pool/shards/00000.tar not found" in text_of(app, "#pool-text")
            await pilot.press("n")

    asyncio.run(run())


# -- snapshots ----------------------------------------------------------------------------------

def _wait_drawn(app):
    async def before(pilot):
        await drawn(app, pilot)
    return before


def test_snapshot_first_pair(rws, snap_compare):
    app = make_app(rws)
    assert snap_compare(app, terminal_size=(90, 26), run_before=_wait_drawn(app))


def test_snapshot_text_only_after_vote(rws, snap_compare):
    app = make_app(rws, images="none")

    async def before(pilot):
        await drawn(app, pilot)
        await pilot.press("y")
        await drawn(app, pilot)

    assert snap_compare(app, terminal_size=(100, 24), run_before=before)


def test_snapshot_help(rws, snap_compare):
    app = make_app(rws, images="none")

    async def before(pilot):
        await drawn(app, pilot)
        await pilot.press("question_mark")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 36), run_before=before)


def test_snapshot_sample_view(tmp_path, snap_compare):
    """The sample view: one benchmark sample (6 candidates) beside its benchmark image, the
    highlighted candidate second after one move."""
    ws = build(tmp_path / "ws", 12, benchmarks=("cifar10",), bench_size=2)
    app = make_app(ws, sort="score")

    async def before(pilot):
        await drawn(app, pilot)
        await pilot.press("v")
        await pilot.press("j")
        for _ in range(500):
            tiles = list(app._tiles.values())
            if tiles and all(t.query_one(".tile-image").image is not None for t in tiles):
                break
            await pilot.pause(0.02)
        await drawn(app, pilot)
        await pilot.pause()

    assert snap_compare(app, terminal_size=(130, 40), run_before=before)


@pytest.mark.parametrize("mode", ["auto", "sixel", "kitty"])
def test_other_image_modes_draw_and_decide(rws, mode):
    async def run():
        app = make_app(rws, images=mode)
        async with app.run_test(size=SIZE) as pilot:
            await drawn(app, pilot)
            assert app.query_one("#pool-image").image is not None
            await pilot.press("y")
            await drawn(app, pilot)
            assert app.session.pos == 1

    asyncio.run(run())
