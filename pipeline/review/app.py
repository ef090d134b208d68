"""The review screen: a Textual app that draws a :class:`~clipcurate.review.session.ReviewSession`.

The app holds no review state of its own. A key press calls one session action (which appends to
the decision log first), then :meth:`ReviewApp.show` redraws the one pair on screen:

1. the texts that the queue row already has (signals, rank, position, votes) are drawn at once;
2. the images and the texts that live elsewhere (pool caption/url, benchmark label) come from the
   :class:`~clipcurate.core.imageload.MediaLoader`: a Future decoded in a worker thread. If it is already
   done (prefetched) the pair is complete in the same frame; otherwise the sides say "loading" and
   the worker hands the result back to the UI thread with ``loop.call_soon_threadsafe``;
3. once that pair is on screen, the next ``prefetch`` pairs are requested, so they are decoded
   (and their half-cell strips rendered) while the reviewer looks.

Only the current pair is ever in widgets, so the size of the queue does not matter to the screen.
The keymap is the ``BINDINGS`` table below, and the help screen (``?``) is generated from it.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time

import numpy as np
from rich.color import Color, ColorType
from rich.color_triplet import ColorTriplet
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widget import Widget
from textual.widgets import Footer, Static
from textual_image._terminal import get_cell_size  # what textual-image itself sizes images with

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.imageload import MediaLoader, PairMedia, Side
from clipcurate.review.session import SIGNALS, SORTS, ReviewSession

# The keymap, as data: (keys, action, footer label, help text). `?` shows this table.
KEYMAP: list[tuple[str, str, str, str]] = [
    ("y", "decide('duplicate')", "duplicate", "the two images are the same picture (a duplicate)"),
    ("n", "decide('not_duplicate')", "not dup", "not a duplicate"),
    ("s", "decide('skip')", "skip", "skip for now (logged; the pair stays undecided)"),
    ("f", "decide('flag')", "flag", "flag the pair for a second look (keeps your vote)"),
    ("v", "toggle_group", "sample view", "sample view: the benchmark sample beside all its undecided candidates, "
     "then back to one pair"),
    ("x", "reject_group", "none is a copy", "in the sample view: none of the candidates shown is a copy "
     "(a not-duplicate for each)"),
    ("u", "undo", "undo", "undo this session's last action (a sample view's: all its pairs) and go back"),
    ("j,down,right", "move(1)", "next", "next pair (in the sample view: next candidate)"),
    ("k,up,left", "move(-1)", "prev", "previous pair (in the sample view: previous candidate)"),
    ("home", "jump('first')", "first", "first pair of the view"),
    ("end", "jump('last')", "last", "last pair of the view"),
    ("o", "cycle_sort", "sort", "next sort order: " + ", ".join(SORTS)),
    # one key per sort order: jump to it directly
    *[(str(i + 1), f"sort('{name}')", f"sort {name}", f"sort by {name}" + (
        " (the pairs that can still change a sample's split first)" if name == "triage" else ""))
      for i, name in enumerate(SORTS)],
    ("b", "cycle_benchmark", "benchmark", "show one benchmark at a time, then all"),
    ("g", "toggle_sample", "sample", "only this benchmark sample's pairs, then all again"),
    ("a", "toggle_audit", "audit", "audit the rule's own decisions (overlap and clean pairs), then back"),
    ("i", "cycle_signal", "signal", "only pairs where one signal was computed (each in turn), then all"),
    ("question_mark", "help", "help", "this help"),
    ("q", "quit_review", "save+quit", "quit (every decision is already saved) and refresh the splits"),
]

SIGNAL_LABELS = {"clip": "CLIP", "detector": "detector", "phash": "pHash dist", "dhash": "dHash dist",
                 "keypoints": "keypoint inliers", "text": "text sim"}

# the same, short, for the sample view's tiles
TILE_LABELS = {"clip": "CLIP", "detector": "det", "phash": "pH", "dhash": "dH", "keypoints": "kp", "text": "txt"}

_local = threading.local()
_HEX = [f"{i:02x}" for i in range(256)]


def halfcell_reference(image, width: int, height: int) -> list[Strip]:
    """textual-image's own half-cell renderable, rendered into strips: the reference that
    :func:`halfcell_strips` must reproduce exactly (tests/test_review_images.py checks it)."""
    # textual-image's renderables: 0.45 s to import (sixel support with them); only the tests and
    # the image modes other than halfcell need them, so the review screen opens without
    from textual_image.renderable.halfcell import Image as Halfcell

    console = getattr(_local, "console", None)
    if console is None:
        console = _local.console = Console(file=io.StringIO(), color_system="truecolor", force_terminal=True,
                                           legacy_windows=False, width=max(1, width), height=max(1, height))
    options = console.options.update(width=width, height=height)
    lines = [ln for ln in console.render_lines(Halfcell(image, "auto", "auto"), options, pad=False) if ln]
    return [Strip(list(Segment.simplify(ln))) for ln in lines]


def fit_cells(size: tuple[int, int], width: int, height: int) -> tuple[int, int]:
    """Cells an image of ``size`` pixels takes in ``width`` x ``height`` cells keeping its aspect —
    textual-image's rule for width = height = "auto", with its terminal cell size in pixels."""

    cw, ch = get_cell_size()
    iw, ih = size
    if not iw or not ih:
        return 0, 0
    ratio = iw / ih
    w = width
    h = round(w * cw / ratio / ch)
    if h > height:
        h = height
        w = round(h * ch * ratio / cw)
    return w, h


def halfcell_strips(image, width: int, height: int) -> list[Strip]:
    """The half-cell rendering of textual-image (``▀``: upper pixel = foreground colour, lower =
    background), five times cheaper: the same resize, then one segment per run of equal cells and
    one cached Style per colour pair. Safe in any thread; the worker threads call it ahead of time."""
    w, h = fit_cells(image.size, width, height)
    if w <= 0 or h <= 0:
        return []
    px = np.asarray(image.convert("RGB").resize((w, 2 * h)), dtype=np.uint32)
    rgb = (px[..., 0] << 16) | (px[..., 1] << 8) | px[..., 2]  # one int per pixel
    styles: dict[tuple[int, int], Style] = {}
    colors: dict[int, Color] = {}

    def color(v: int) -> Color:  # == Color.from_triplet(...), without formatting the name each time
        c = colors.get(v)
        if c is None:
            r, g, b = v >> 16, (v >> 8) & 255, v & 255
            c = colors[v] = Color("#" + _HEX[r] + _HEX[g] + _HEX[b], ColorType.TRUECOLOR, None, ColorTriplet(r, g, b))
        return c

    pad = [Segment(" " * ((width - w) // 2))] if width > w + 1 else []
    strips = []
    for y in range(h):
        upper, lower = rgb[2 * y].tolist(), rgb[2 * y + 1].tolist()
        segs = list(pad)
        x = 0
        while x < w:
            key = (upper[x], lower[x])
            run = x + 1
            while run < w and upper[run] == key[0] and lower[run] == key[1]:
                run += 1
            st = styles.get(key)
            if st is None:
                st = styles[key] = Style.from_color(color(key[0]), color(key[1]))
            segs.append(Segment("▀" * (run - x), st))
            x = run
        strips.append(Strip(segs))
    return strips


class HalfcellView(Widget):
    """Shows strips rendered by :func:`halfcell_strips` — textual-image's half-cell rendering,
    done in the loader's worker thread so that swapping pairs costs the UI thread no image work.
    (textual-image's own widget renders in ``render()``, on the UI thread, at every refresh.)
    Re-renders itself on resize."""

    def __init__(self, id: str, classes: str = ""):
        super().__init__(id=id, classes=classes)
        self.image = None
        self._strips: list[Strip] = []
        self._made_for = (0, 0)

    @property
    def cells(self) -> tuple[int, int]:
        return self.size.width, self.size.height

    def set_image(self, image, prepared=None) -> None:
        self.image = image
        size = self.cells
        if image is None or 0 in size:
            self._strips = []
        elif prepared is not None and prepared[0] == size:
            self._strips = prepared[1]
        else:  # first pair, or the terminal was resized since the worker rendered it
            self._strips = halfcell_strips(image, *size)
        self._made_for = size
        self.refresh()

    def on_resize(self, event) -> None:
        if self.image is not None and self._made_for != self.cells:
            self.set_image(self.image)

    def render_line(self, y: int) -> Strip:
        return self._strips[y] if y < len(self._strips) else Strip.blank(self.size.width)


def _image_widget(mode: str, id: str):
    """Half-cell blocks by default (our pre-rendering view over textual-image's half-cell
    renderable); textual-image's own widgets for sixel, kitty (TGP) and auto-detection."""
    if mode == "halfcell":
        return HalfcellView(id=id, classes="image halfcell")
    from textual_image import widget as tw  # 0.44 s to import (see halfcell_reference)

    cls = {"sixel": tw.SixelImage, "kitty": tw.TGPImage, "auto": tw.Image}[mode]
    return cls(None, id=id, classes="image")


def _fmt(v, digits=3) -> str:
    if v is None:
        return "—"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


class HelpScreen(ModalScreen):
    """The keymap, generated from KEYMAP; any key closes it."""

    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        rows = ["[b]clipcurate review — keys[/b]", ""]
        for keys, _action, _label, text in KEYMAP:
            shown = keys.replace("question_mark", "?").replace(",", " / ")
            rows.append(f"  [b]{shown:<16}[/b] {text}")
        rows += ["", "Every decision is appended to review/decisions.jsonl the moment it is made.",
                 "Press escape or ? to close."]
        yield Static("\n".join(rows), id="help")

    def on_key(self, event) -> None:
        event.stop()
        self.dismiss()


class ReviewApp(App):
    """Side by side: the pool sample and the benchmark sample of one queued pair."""

    CSS_PATH = "app.tcss"
    TITLE = "clipcurate review"
    BINDINGS = [Binding(keys, action, label, show=label in ("duplicate", "not dup", "skip", "undo", "flag", "sort",
                                                             "benchmark", "sample view", "none is a copy",
                                                             "audit", "help", "save+quit"))
                for keys, action, label, _ in KEYMAP]

    def __init__(self, session: ReviewSession, loader: MediaLoader, *, images: str = "halfcell",
                 prefetch: int = 4):
        super().__init__()
        self.session = session
        self.loader = loader
        self.images = images
        self.prefetch = prefetch
        self.drawn_pair_id: str | None = None
        self.drawn_at: float = 0.0
        self.drawn_cpu: float = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ui_thread: int | None = None
        self.group_mode = False  # the sample view is on
        self._tiles: dict[str, Vertical] = {}  # the sample view's candidates on screen, by pair_id

    # -- layout -----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="topbar")
        with Horizontal(id="sides"):
            for side in ("pool", "bench"):
                with Vertical(id=f"{side}-side", classes="side"):
                    yield Static(id=f"{side}-title", classes="title")
                    if self.images == "none":
                        yield Static(id=f"{side}-image", classes="image text-only")
                    else:
                        yield _image_widget(self.images, f"{side}-image")
                    yield Static(id=f"{side}-text", classes="text")
                if side == "pool":  # the sample view: every undecided candidate in place of the one pair
                    yield VerticalScroll(id="group")
        yield Static(id="signals")
        yield Static(id="verdict")
        yield Footer()

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._ui_thread = threading.get_ident()
        if self.images == "halfcell":
            self._views = {w: self.query_one(f"#{w}-image", HalfcellView) for w in ("pool", "bench")}
            self.loader.prepare = self._prepare
        self.warmed = self.loader.warm(self.session.queue.benchmarks)
        # draw once the layout has given the image views their size, so that the worker renders
        # the prefetched pairs at the right size from the start
        self.call_after_refresh(self.show)

    def _prepare(self, which: str, side: Side):
        """Worker thread: render the half-cell strips for the size the view has now."""
        size = self._views[which].cells
        if 0 in size:
            return None
        return size, halfcell_strips(side.image, *size)

    def on_unmount(self) -> None:
        self.loader.close()
        self.session.close()

    # -- drawing ----------------------------------------------------------------------------
    def show(self) -> None:
        """Draw the current pair: queue texts now, images when decoded (usually already)."""
        s = self.session
        pair = s.pair()
        decided, total = s.progress()
        bench = ",".join(s.benchmarks) if s.benchmarks else "all"
        if s.sample is not None:
            bench = f"{s.sample[0]} #{s.sample[1]}"
        mode = "[b]AUDIT[/b] " if s.audit else ""
        if self.group_mode:
            self._draw_group()
            mode += f"[b]SAMPLE VIEW[/b] {len(self._tiles)} candidate(s)  "
        matter = "" if s.audit else f"   matter [b]{s.matter()}[/b]"
        top = (f"{mode}[b]clipcurate review[/b]  reviewer [b]{s.reviewer}[/b]   "
               f"pair [b]{s.pos + 1 if pair else 0} / {total}[/b]{matter}   decided {decided}/{total}   "
               f"sort {s.sort}   benchmark {bench}" + (f"   signal {s.signal}" if s.signal else ""))
        self.query_one("#topbar", Static).update(top)
        if pair is None:
            for side in ("pool", "bench"):
                self._draw_side(side, Side(title=side, error="nothing to review in this view"))
            self.query_one("#signals", Static).update("")
            self._draw_state()
            return
        self._draw_signals(pair)
        self._draw_state()
        fut = self.loader.request(pair)
        if fut.done():
            self._apply(fut.result())
        else:
            self._draw_loading(pair)
            fut.add_done_callback(self._from_worker)

    def _from_worker(self, fut) -> None:
        try:
            media = fut.result()
        except Exception:  # cancelled at exit
            return
        if threading.get_ident() == self._ui_thread:
            self._apply(media)
        elif self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._apply, media)
            except RuntimeError:  # the app closed its loop meanwhile
                pass

    def _apply(self, media: PairMedia) -> None:
        if media.pair_id != self.session.pair_id or not self.is_running:
            return  # the reviewer has moved on; this result stays in the loader's cache
        self._draw_side("pool", media.pool)
        self._draw_side("bench", media.bench)
        self.call_after_refresh(self._drawn, media.pair_id)

    def _drawn(self, pid: str) -> None:
        # the benchmark reads these: when the pair was complete on screen (wall clock, and CPU
        # time of the UI thread, which other processes on a busy machine do not inflate)
        self.drawn_pair_id, self.drawn_at, self.drawn_cpu = pid, time.perf_counter(), time.thread_time()
        # only now start decoding the next pairs: the workers would otherwise compete for the GIL
        # with the UI thread while it draws this one
        if pid == self.session.pair_id:
            self.loader.prefetch(self.session.upcoming(self.prefetch))

    def _draw_loading(self, pair: dict) -> None:
        self.query_one("#pool-title", Static).update("[b]POOL[/b]")
        self.query_one("#bench-title", Static).update(
            f"[b]BENCHMARK[/b] {pair['benchmark']} #{pair['bench_index']}")
        for side in ("pool", "bench"):
            self.query_one(f"#{side}-text", Static).update("loading…")

    def _draw_side(self, side: str, data: Side) -> None:
        title = "[b]POOL[/b]" if side == "pool" else f"[b]BENCHMARK[/b] {data.title}"
        self.query_one(f"#{side}-title", Static).update(title)
        img = self.query_one(f"#{side}-image")
        if self.images == "none":
            img.update(f"[image {data.size[0]}×{data.size[1]} {data.format}]" if data.size else "[no image]")
        elif isinstance(img, HalfcellView):
            img.set_image(data.image, data.prepared)
        else:
            img.image = data.image
        lines = list(data.lines)
        if data.error:
            lines.insert(0, f"[red]{data.error}[/red]")
        text = Text()
        for i, line in enumerate(lines):
            if i:
                text.append("\n")
            if line.startswith("[red]"):
                text.append(line[5:-6], style="red")
            elif i == (1 if data.error else 0) and side == "pool" and len(lines) > 2:
                text.append(line, style="bold")  # the caption
            else:
                text.append(line)
        self.query_one(f"#{side}-text", Static).update(text)

    def _draw_signals(self, pair: dict) -> None:
        parts = []
        for name, (col, _) in SIGNALS.items():
            digits = 3 if col.startswith(("score", "text")) else 0
            parts.append(f"{SIGNAL_LABELS[name]} [b]{_fmt(pair[col], digits)}[/b]")
        parts.append(f"rank [b]{_fmt(pair['rank'])}[/b]")
        parts.append(f"queue #{pair['position']}")
        text = "   ".join(parts)
        if pair.get("decision") is not None:  # the audit queue: what the rule decided, and why
            text += f"\nrule: [b]{pair['decision']}[/b] ({pair['reason']})"
        self.query_one("#signals", Static).update(text)

    def _draw_state(self) -> None:
        s = self.session
        if s.pair_id is None:
            self.query_one("#verdict", Static).update(s.message)
            return
        st = s.state()
        if st["vote"]:
            mine = f"your vote: [b]{st['vote'].replace('_', ' ')}[/b]"
            if st["seconds"] is not None:
                mine += f" ({st['seconds']:.1f} s)"
        elif st["skipped"]:
            mine = "your vote: [i]skipped[/i]"
        else:
            mine = "your vote: [i]undecided[/i]"
        if st["flagged"]:
            mine += "   [b]⚑ flagged[/b]"
        others = []
        for rev, dec in st["others"].items():
            src = st["others_source"][rev]
            others.append(f"{rev}={dec.replace('_', ' ')}" + ("" if src == "human" else f" [i](automatic, {src})[/i]"))
        line = mine + ("   others: " + ", ".join(others) if others else "")
        if s.message:
            line += f"   — {s.message}"
        self.query_one("#verdict", Static).update(line)

    def _draw_group(self) -> None:
        """The sample view: one tile per undecided candidate of the current pair's benchmark sample
        (the pool image, its position and scores), the current one highlighted. Tiles are rebuilt
        only when the candidates change; their images come from the loader like a pair's."""
        s = self.session
        grid = self.query_one("#group", VerticalScroll)
        shown = s.group()
        pids = [s.queue.pair_ids[s.order[i]] for i in shown]
        if pids != list(self._tiles):
            grid.remove_children()
            self._tiles = {}
            for k, i in enumerate(shown):
                pair = s.pair(i)
                image = (Static(classes="text-only") if self.images == "none"
                         else _image_widget(self.images, None))
                image.add_class("tile-image")
                tile = Vertical(image, Static(self._tile_text(pair), classes="tile-text"), classes="tile")
                tile.border_title = f"{k + 1}"
                self._tiles[pair["pair_id"]] = tile
                fut = self.loader.request(pair)
                fut.add_done_callback(lambda f, t=tile: self._from_tile_worker(f, t))
            grid.mount_all(self._tiles.values())
        for pid, tile in self._tiles.items():
            tile.set_class(pid == s.pair_id, "-current")
        cur = self._tiles.get(s.pair_id)
        if cur is not None:
            self.call_after_refresh(cur.scroll_visible, animate=False)

    @staticmethod
    def _tile_text(pair: dict) -> str:
        parts = []
        for name, (col, _) in SIGNALS.items():
            if pair[col] is not None:
                digits = 3 if col.startswith(("score", "text")) else 0
                parts.append(f"{TILE_LABELS[name]} [b]{_fmt(pair[col], digits)}[/b]")
        return f"queue #{pair['position']}  " + "  ".join(parts)

    def _from_tile_worker(self, fut, tile: Vertical) -> None:
        try:
            media = fut.result()
        except Exception:  # cancelled at exit
            return
        if threading.get_ident() == self._ui_thread:
            self._apply_tile(tile, media)
        elif self._loop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._apply_tile, tile, media)
            except RuntimeError:
                pass

    def _apply_tile(self, tile: Vertical, media: PairMedia) -> None:
        if not self.is_running or all(t is not tile for t in self._tiles.values()):
            return  # the sample view moved on to other candidates
        if not tile.is_attached:  # decoded before the tile was mounted (a prefetched pair)
            self.call_after_refresh(self._apply_tile, tile, media)
            return
        img = tile.query_one(".tile-image")
        data = media.pool
        if self.images == "none":
            img.update(f"[image {data.size[0]}×{data.size[1]} {data.format}]" if data.size else "[no image]")
        elif isinstance(img, HalfcellView):
            img.set_image(data.image)
        else:
            img.image = data.image

    # -- actions (the keymap points here) ---------------------------------------------------
    def check_action(self, action: str, parameters) -> bool | None:
        """``x`` exists in the sample view only (hidden from the footer elsewhere)."""
        if action == "reject_group":
            return self.group_mode
        return True

    def action_toggle_group(self) -> None:
        s = self.session
        if s.audit:
            s.message = "the sample view shows undecided pairs: not in the audit"
            self.show()
            return
        self.group_mode = not self.group_mode
        self.query_one("#sides").set_class(self.group_mode, "-group")
        if self.group_mode:
            shown = s.group()
            if shown and s.pos not in shown:
                s.goto(shown[0])
            s.message = "sample view: y marks the highlighted candidate a copy, x rejects them all"
        else:
            self.query_one("#group", VerticalScroll).remove_children()
            self._tiles = {}
            s.message = "one pair at a time"
        self.refresh_bindings()
        self.show()

    def action_reject_group(self) -> None:
        if self.group_mode:
            self.session.reject_group()
            self.show()

    def action_decide(self, decision: str) -> None:
        self.session.decide(decision)
        self.show()

    def action_undo(self) -> None:
        self.session.undo()
        self.show()

    def action_move(self, delta: int) -> None:
        s = self.session
        s.message = ""
        shown = s.group() if self.group_mode else []
        if shown:  # the sample view: from candidate to candidate
            k = shown.index(s.pos) + delta if s.pos in shown else 0
            s.sync()
            s.goto(shown[min(max(0, k), len(shown) - 1)])
        else:
            s.move(delta)
        self.show()

    def action_jump(self, where: str) -> None:
        self.session.message = ""
        self.session.goto(0 if where == "first" else len(self.session) - 1)
        self.show()

    def action_cycle_sort(self) -> None:
        s = self.session
        nxt = SORTS[(SORTS.index(s.sort) + 1) % len(SORTS)]
        s.set_view(nxt, s.benchmarks, s.signal, keep_pair=True)
        s.message = f"sorted by {nxt}"
        self.show()

    def action_sort(self, name: str) -> None:
        s = self.session
        s.set_view(name, s.benchmarks, s.signal, keep_pair=name != "triage")
        s.message = f"sorted by {name}"
        self.show()

    def action_toggle_sample(self) -> None:
        s = self.session
        pair = s.pair()
        if s.sample is None and pair is None:
            return
        chosen = None if s.sample is not None else (pair["benchmark"], int(pair["bench_index"]))
        s.set_view(s.sort, s.benchmarks, s.signal, keep_pair=True, sample=chosen)
        s.message = f"sample {chosen[0]} #{chosen[1]}: {len(s)} pair(s)" if chosen else "all samples"
        self.show()

    def action_toggle_audit(self) -> None:
        s = self.session
        if self.group_mode:
            self.action_toggle_group()
        try:
            s.set_audit(not s.audit)
        except ClipcurateError as exc:
            s.message = str(exc)
        else:
            s.message = (f"audit: {len(s)} automatic decisions, in a seeded random order" if s.audit
                         else "back to the review queue")
        self.show()

    def action_cycle_benchmark(self) -> None:
        s = self.session
        names = s.queue.benchmarks
        cur = s.benchmarks[0] if len(s.benchmarks) == 1 else None
        i = names.index(cur) + 1 if cur in names else 0
        chosen = [names[i]] if i < len(names) else []
        s.set_view(s.sort, chosen, s.signal, keep_pair=True)
        s.message = f"benchmark: {chosen[0] if chosen else 'all'}"
        self.show()

    def action_cycle_signal(self) -> None:
        s = self.session
        names = list(SIGNALS)
        i = names.index(s.signal) + 1 if s.signal in names else 0
        chosen = names[i] if i < len(names) else None
        s.set_view(s.sort, s.benchmarks, chosen, keep_pair=True)
        s.message = f"only pairs with {chosen} computed ({len(s)})" if chosen else "all signals"
        self.show()

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_quit_review(self) -> None:
        self.exit(self.session.changed)
