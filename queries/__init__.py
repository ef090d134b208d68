"""The queries stage: CLIP's query list from raw Wikipedia (dump reader, markup stripper, sharded
counting, page views, WordNet) and MetaCLIP's substring matching + balancing.

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import queries

    queries.build_queries(ws, dumps=[...], pageviews=[...])     # -> queries/queries.parquet
    queries.match_candidates(ws, "pairs.parquet", max_per_query=20_000)
                                                                 # -> candidates/candidates.parquet
    queries.load_query_list(ws)                                  # the entries, in entry_id order

(``build_queries`` and ``match_candidates`` are ``stage.build`` and ``stage.match``: the package
cannot re-export them as ``build`` and ``match``, which name its modules.)

``QUERIES``, ``CANDIDATES`` and ``ENTRY_COUNTS`` are the manifests it writes. Modules: ``stage``
(options, the two entry points), ``build`` + ``counting`` + ``dump`` + ``wikitext`` + ``pageviews``
+ ``wordnet`` (the list), ``candidates`` + ``match`` (matching and balancing), ``manifests``.
"""

if __name__ != "clipcurate.queries":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate.queries, not {__name__} (this folder is installed as clipcurate.queries: pip install -e .)")

from clipcurate.queries.candidates import load_query_list, read_candidates  # noqa: E402
from clipcurate.queries.manifests import CANDIDATES, ENTRY_COUNTS, QUERIES  # noqa: E402
from clipcurate.queries.stage import build as build_queries  # noqa: E402
from clipcurate.queries.stage import match as match_candidates  # noqa: E402

__all__ = ["build_queries", "match_candidates", "load_query_list", "read_candidates", "QUERIES", "CANDIDATES",
           "ENTRY_COUNTS"]
