"""Stage ``review``: people decide the pairs that ``overlap`` put in its review band.

The public API (what the CLI, ``clipcurate run`` and other stages call)::

    from clipcurate import review

    s = review.ReviewSession(ws, review.default_reviewer())   # the state machine behind the screen
    s = review.ReviewSession(ws, "ana", sort="triage")         # pairs that can change a split first
    s = review.ReviewSession(ws, "ana", audit=True)            # audit the rule's own decisions
    review.ReviewApp(s, ...).run()                             # the Textual screen (imports textual)
    review.summary(ws); review.export(ws, "out.csv", "csv")    # `review status` / `review export`
    review.mark_progress(ws)                                   # review/_SUCCESS when all are decided
    review.append_decisions(ws, [record, ...])                 # the decision log, appended safely
    review.effective_decisions(ws)                             # pair_id -> verdict (majority, human > auto)
    review.pair_id(pool_uid, benchmark, bench_index)           # the id of a pair in the log

The overlap stage reads the decision log (``effective_decisions``) to build its splits; the review
stage never imports overlap (``clipcurate.overlap.refresh_after_review`` refreshes the splits).
"""

from clipcurate.review.decisions import append as append_decisions
from clipcurate.review.decisions import effective as effective_decisions
from clipcurate.review.decisions import pair_id
from clipcurate.review.session import IMAGE_MODES, SIGNALS, SORTS, Queue, ReviewSession, default_reviewer, \
    load_queue, mark_progress, summary
from clipcurate.review.export import export, export_table

__all__ = [
    "IMAGE_MODES", "Queue", "ReviewApp", "ReviewSession", "SIGNALS", "SORTS", "append_decisions",
    "default_reviewer", "effective_decisions", "export", "export_table", "load_queue", "mark_progress", "pair_id",
    "summary",
]


def __getattr__(name: str):
    if name == "ReviewApp":
        # textual: 0.3 s to import; only `clipcurate review` (the screen) pays it, not every command
        from clipcurate.review.app import ReviewApp

        return ReviewApp
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
