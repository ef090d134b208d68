"""CLIP's query list from raw Wikipedia (dump reader, markup stripper, sharded counting, page views,
WordNet) and MetaCLIP's substring matching + balancing. The stage module is ``clipcurate.queries.stage``."""

if __name__ != "clipcurate.queries":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate.queries, not {__name__} (this folder is installed as clipcurate.queries: pip install -e .)")
