"""`clipcurate queries build|match`: parse options, call clipcurate.queries."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from clipcurate.core.console import out

from clipcurate.cli.context import resolve
from clipcurate.cli.options import force_option

queries_app = typer.Typer(
    help="Build CLIP's query list from Wikipedia and match candidate pairs against it (MetaCLIP).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


@queries_app.command("build")
def build(
    ctx: typer.Context,
    dumps: List[Path] = typer.Argument(..., help="pages-articles .xml / .xml.bz2 dumps (multistream: index file next to it)."),
    pageviews: Optional[List[Path]] = typer.Option(None, "--pageviews", help="Hourly pageviews-*.gz file (repeatable): the titles source."),
    wordnet: Optional[str] = typer.Option(None, "--wordnet", help="WordNet 3.0 dict dir, 'auto' or 'none' [config: auto]."),
    unigram_min_count: Optional[int] = typer.Option(None, "--unigram-min-count", help="Words seen at least this often [100]."),
    bigram_min_pmi: Optional[float] = typer.Option(None, "--bigram-min-pmi", help="Bigrams with log2 PMI at least this [30]."),
    bigram_min_count: Optional[int] = typer.Option(None, "--bigram-min-count", help="Prune bigrams seen fewer times [2]."),
    title_min_views: Optional[int] = typer.Option(None, "--title-min-views", help="Titles with at least this many summed views [70]."),
    title_min_hour_views: Optional[int] = typer.Option(None, "--title-min-hour-views", help="Count page-view rows with at least this many views [50]."),
    size: Optional[int] = typer.Option(None, "--size", help="Cap on the number of queries [500000]."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Counting processes, then merging processes [1]."),
    partitions: Optional[int] = typer.Option(None, "--partitions", help="On-disk count partitions [32]."),
    spill_entries: Optional[int] = typer.Option(None, "--spill-entries", help="Spill counts to disk past this many keys [2000000]."),
    chunk_mb: Optional[float] = typer.Option(None, "--chunk-mb", help="Compressed MB of multistream bz2 per shard [32]."),
    force: force_option("Count again from scratch.") = False,
):
    """Build the query list from Wikipedia dumps.

    \b
    Example:  clipcurate queries build enwiki.xml.bz2 --wordnet /usr/share/wordnet
    """
    from clipcurate import queries  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, create=True)
    opts = cfg.get("queries", {
        "wordnet": wordnet, "unigram_min_count": unigram_min_count, "bigram_min_pmi": bigram_min_pmi,
        "bigram_min_count": bigram_min_count, "title_min_views": title_min_views,
        "title_min_hour_views": title_min_hour_views, "size": size, "workers": workers,
        "partitions": partitions, "spill_entries": spill_entries, "chunk_mb": chunk_mb})
    wn = opts.pop("wordnet")
    stats = queries.build_queries(ws, dumps=[str(d) for d in dumps], pageviews=[str(p) for p in pageviews or []],
                        wordnet=wn, force=force, **opts)
    for src, v in stats["sources"].items():
        out(f"{src}\t{v['in_list']}")
    out(f"total\t{stats['size']}")


@queries_app.command("match")
def match(
    ctx: typer.Context,
    candidates: Path = typer.Argument(..., help="Candidate pairs: .parquet (file or folder), .csv, .tsv or .jsonl."),
    queries_file: Optional[Path] = typer.Option(None, "--queries", help="Query list (default: the workspace's queries.parquet; also .json list or .txt)."),
    max_per_query: Optional[int] = typer.Option(None, "--max-per-query", "-t", help="Balancing target t per query [20000]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the balancing draws [0]."),
    url_column: Optional[str] = typer.Option(None, "--url-column", help="URL column name [url]."),
    caption_column: Optional[str] = typer.Option(None, "--caption-column", help="Caption column name [caption]."),
    engine: Optional[str] = typer.Option(None, "--engine", help="pyahocorasick or ahocorasick_rs [pyahocorasick]."),
    force: force_option("Redo even if the output is up to date.") = False,
):
    """Match candidate pairs against the query list and balance them (MetaCLIP).

    \b
    Example:  clipcurate queries match laion_part0.parquet --caption-column TEXT --url-column URL
    """
    from clipcurate import queries  # on use, not at start-up: see cli/__init__.py

    ws, cfg = resolve(ctx, create=True)
    opts = cfg.get("match", {
        "max_per_query": max_per_query, "seed": seed, "url_column": url_column,
        "caption_column": caption_column, "engine": engine})
    stats = queries.match_candidates(ws, candidates, queries_file=queries_file, force=force, **opts)
    for k in ("rows", "matched", "kept", "entries_matched"):
        out(f"{k}\t{stats[k]}")


def register(app: typer.Typer) -> None:
    app.add_typer(queries_app, name="queries")
