"""What the queries stage writes: its two folders and the three manifests in them.

``queries/queries.parquet`` [queries] is made by ``clipcurate queries build``;
``candidates/candidates.parquet`` [candidates] and ``candidates/entry_counts.parquet``
[entry_counts] by ``clipcurate queries match``. The columns below are the documentation
(``docs/workspace.md`` is generated from them).
"""

from __future__ import annotations

import pyarrow as pa

from clipcurate.core import manifest

STAGE = "queries"
QUERIES_FOLDER = "queries"
CANDIDATES_FOLDER = "candidates"

QUERIES = manifest.register(
    "queries", version=1, glob="queries/queries.parquet", stage=STAGE,
    doc="The query list (CLIP §2.2 / MetaCLIP): WordNet synset head lemmas, then Wikipedia unigrams, "
        "high-PMI bigrams and popular article titles, deduplicated and capped; row order = entry_id.",
    columns=[
        ("query", pa.string(), "the entry, matched case-sensitively as ' query ' in spaced captions"),
        ("source", pa.string(), "wordnet | unigram | bigram | title (the first source that produced it)"),
        ("count", pa.int64(), "occurrences in the Wikipedia articles (unigram, bigram; null otherwise)"),
        ("pmi", pa.float64(), "log2 PMI as NLTK BigramAssocMeasures.pmi (bigram; null otherwise)"),
        ("views", pa.int64(), "summed desktop en page views over the given hours (title; null otherwise)"),
        ("entry_id", pa.int32(), "position in the list (0-based); candidates.entry_ids refer to it"),
    ])

CANDIDATES = manifest.register(
    "candidates", version=1, glob="candidates/candidates.parquet", stage=STAGE,
    doc="Candidate (url, caption) pairs that matched at least one query and survived balancing "
        "(MetaCLIP: p = min(1, t / count) per entry); the input of `clipcurate download`.",
    columns=[
        ("uid", pa.string(), "pair_uid(url, caption): 32 hex characters"),
        ("url", pa.string(), "image URL"),
        ("caption", pa.string(), "the caption as given (matching used its spaced form)"),
        ("entry_ids", pa.list_(pa.int32()), "sorted entry_ids of every query the caption matched"),
        ("extra", pa.string(), "the other input columns of the row as a JSON object (null if none)"),
    ])

ENTRY_COUNTS = manifest.register(
    "entry_counts", version=1, glob="candidates/entry_counts.parquet", stage=STAGE,
    doc="Per query: matched pairs over the whole input before balancing, and kept pairs after.",
    columns=[
        ("entry_id", pa.int32(), "position in the query list"),
        ("query", pa.string(), "the entry"),
        ("count_before", pa.int64(), "distinct matched pairs containing the entry, whole input"),
        ("count_after", pa.int64(), "of those, pairs kept by balancing"),
    ])
