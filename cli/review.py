"""`clipcurate review`: decide the pairs in overlap's review band (a terminal UI), see progress, export."""

from __future__ import annotations

import json
import sys
from enum import Enum
from typing import List, Optional

import typer

from clipcurate.core.console import log, out
from clipcurate.core.errors import ClipcurateError

from clipcurate.cli.context import resolve, workspace
from clipcurate.cli.options import TableOrJson, TableOrJsonOption
from clipcurate.cli.output import echo_table

review_app = typer.Typer(no_args_is_help=False, add_completion=False, rich_markup_mode=None)


class Images(str, Enum):
    auto = "auto"
    halfcell = "halfcell"
    sixel = "sixel"
    kitty = "kitty"
    none = "none"


class ExportFormat(str, Enum):
    parquet = "parquet"
    csv = "csv"


@review_app.callback(invoke_without_command=True)
def review(
    ctx: typer.Context,
    reviewer: Optional[str] = typer.Option(
        None, "--reviewer", "-r", metavar="NAME", help="Name saved with each decision (default: $CLIPCURATE_REVIEWER, then $USER)."),
    benchmark: Optional[List[str]] = typer.Option(
        None, "--benchmark", "-b", metavar="NAME", help="Only pairs of this benchmark (repeatable)."),
    sort: Optional[str] = typer.Option(
        None, "--sort", metavar="ORDER",
        help="triage (default: pairs that can still change a split first), score (queue order), clip, detector, "
             "phash, dhash, keypoints, text or benchmark."),
    signal: Optional[str] = typer.Option(
        None, "--signal", metavar="SIGNAL", help="Only pairs where this signal was computed (clip, detector, phash, ...)."),
    sample: Optional[str] = typer.Option(
        None, "--sample", metavar="BENCHMARK:INDEX", help="Only the pairs of this benchmark sample, e.g. cifar10:12."),
    audit: bool = typer.Option(
        False, "--audit", help="Audit the rule's own decisions (overlap and clean pairs) instead of the review band."),
    images: Optional[Images] = typer.Option(
        None, "--images", help="auto, halfcell (default), sixel, kitty, or none for text only."),
    prefetch: Optional[int] = typer.Option(None, "--prefetch", metavar="N", help="Pairs decoded ahead (default 4)."),
):
    """Review the pairs that `overlap` could not decide: y duplicate, n not, u undo, ? help.

    \b
    Example:  clipcurate review --reviewer ana --benchmark cifar10
    """
    if ctx.invoked_subcommand is not None:
        return
    from clipcurate.review import session as rv  # on use, not at start-up: see cli/__init__.py

    ws, config = resolve(ctx, must_exist=True)
    cfg = config.get("review", {"reviewer": reviewer, "sort": sort, "prefetch": prefetch,
                                          "images": images.value if images else None})
    if cfg["images"] not in rv.IMAGE_MODES:
        raise ClipcurateError(f"[review] images = {cfg['images']!r}: use one of {', '.join(rv.IMAGE_MODES)}")
    name = rv.default_reviewer(cfg["reviewer"] or None)
    key = None
    if sample is not None:
        bench_name, _, index = sample.rpartition(":")
        if not bench_name or not index.isdigit():
            raise typer.BadParameter(f"{sample!r}: use BENCHMARK:INDEX, e.g. cifar10:12", param_hint="--sample")
        key = (bench_name, int(index))
    session = rv.ReviewSession(ws, name, sort="score" if audit and sort is None else cfg["sort"],
                               benchmarks=benchmark or None, signal=signal, sample=key, audit=audit,
                               background_fsync=True)
    if len(session) == 0:
        log(("nothing to audit: no automatic decision" if audit else "nothing to review: the review queue is empty")
            + (" for this filter" if benchmark or signal or sample else ""))
        return
    if not _interactive():
        raise ClipcurateError("`clipcurate review` needs a terminal; use `clipcurate review status` or "
                              "`clipcurate review export` in scripts")
    try:
        changed = open_app(ws, session, cfg["images"], int(cfg["prefetch"]))
    finally:
        session.close()
    decided, total = session.progress()
    log(f"{name}: {decided}/{total} pairs decided in this view")
    if changed:
        from clipcurate.overlap import refresh_after_review  # on use, not at start-up: see cli/__init__.py

        log(refresh_after_review(ws))
        rv.mark_progress(ws)


def _interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def open_app(ws, session, images: str, prefetch: int) -> bool:
    """Run the Textual app; returns whether this session wrote decisions."""
    from clipcurate.core.imageload import MediaLoader  # 0.1 s to import (image decoders): only the screen needs it
    from clipcurate.review import ReviewApp  # textual: 0.3 s to import, only when the screen opens

    if images != "none":
        import textual_image.widget  # noqa: F401 - asks the terminal for its cell size before Textual starts
    loader = MediaLoader(ws, decode_images=images != "none")
    app = ReviewApp(session, loader, images=images, prefetch=prefetch)
    app.run()
    return bool(session.changed)


@review_app.command("status")
def status(ctx: typer.Context, fmt: TableOrJsonOption = TableOrJson.table):
    """Show review progress, each reviewer's decisions, automatic ones and disagreements.

    \b
    Example:  clipcurate review status --format json
    """
    from clipcurate.review import session as rv  # on use, not at start-up: see cli/__init__.py

    ws = workspace(ctx, must_exist=True)
    s = rv.summary(ws)
    if fmt == TableOrJson.json:
        out(json.dumps(s, default=str))
        return
    queued = s["queued"]
    rows = [
        ["queued pairs", "" if queued is None else queued],
        ["decided", s["decided"]],
        ["  duplicate (→ overlap)", s["duplicate"]],
        ["  not duplicate (→ clean)", s["not_duplicate"]],
        ["  of which automatic (not a person)", s["decided_automatically"]],
        ["undecided", "" if s["undecided"] is None else s["undecided"]],
        ["  of which can still change a split", "" if s["pairs_that_matter"] is None else s["pairs_that_matter"]],
        ["flagged", s["flagged"]],
        ["disagreements", s["disagreements"]],
    ]
    if s["torn_or_bad_lines"]:
        rows.append(["unreadable log lines skipped", s["torn_or_bad_lines"]])
    echo_table(["review", "pairs"], rows, title="review progress")
    if s["reviewers"]:
        cols = ["reviewer", "kind", "decided", "duplicate", "not_duplicate", "skipped", "flagged", "median_seconds"]
        echo_table(cols, [[r[c] for c in cols] for r in s["reviewers"]], title="by reviewer")
    if any(a["audited"] for a in s["audit"]):
        cols = ["automatic", "audited", "agreed", "rate", "ci_low", "ci_high"]
        echo_table(cols, [[a[c] for c in cols] for a in s["audit"]],
                   title="audit: people vs the rule (rate for overlap = measured precision; 95% Clopper-Pearson)")
    if s["disagreement_pairs"]:
        cols = ["pair_id", "benchmark", "bench_index", "votes", "verdict", "reviewers"]
        echo_table(cols, [[d[c] for c in cols] for d in s["disagreement_pairs"]],
                   title="disagreements (majority wins, ties count as duplicate)")


@review_app.command("export")
def export(
    ctx: typer.Context,
    output: str = typer.Option(..., "--output", "-o", help="File to write."),
    fmt: ExportFormat = typer.Option(ExportFormat.parquet, "--format", "-f", help="parquet or csv."),
):
    """Write one row per decided pair (verdict, votes, reviewers, scores) to Parquet or CSV.

    \b
    Example:  clipcurate review export --format csv --output decisions.csv
    """
    from clipcurate import review  # on use, not at start-up: see cli/__init__.py

    ws = workspace(ctx, must_exist=True)
    n = review.export(ws, output, fmt.value)
    log(f"wrote {n} decided pairs to {output}")


def register(app: typer.Typer) -> None:
    app.add_typer(review_app, name="review")
