"""CLIP's query list from raw Wikipedia (dump reader, markup stripper, sharded counting, page views,
WordNet) and MetaCLIP's substring matching + balancing. The stage module is ``pipeline.queries``."""
