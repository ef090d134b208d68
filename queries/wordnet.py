"""WordNet 3.0 synset head lemmas, read straight from the dict files (no NLTK needed).

A synset is one line of ``data.adj`` / ``data.adv`` / ``data.noun`` / ``data.verb``::

    02084071 05 n 05 dog 0 domestic_dog 0 Canis_familiaris 0 ... | a member of the genus Canis ...
    offset   lex pos n_words(hex) word lex_id word lex_id ...

NLTK names a synset after its first word, lowercased, with any adjective marker (``(a)``, ``(p)``,
``(ip)``) cut off: ``dog.n.01``. MetaCLIP's entry is the part of that name before the first
``.`` with ``_`` turned into a space: ``dog``; ``domestic_dog`` would give ``domestic dog``.
(A word with a dot in it — ``a.d.`` — is cut at its first dot, as the name rule says.)
Synsets come in NLTK's ``all_synsets()`` order: adjectives (satellites included), adverbs, nouns,
verbs, each in file order; lines starting with a space are the license header.

:func:`find_dict_dir` auto-detects Debian/Ubuntu's ``wordnet-base`` (/usr/share/wordnet) and NLTK's
``nltk_data/corpora/wordnet``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from clipcurate.core.errors import ClipcurateError

POS_FILES = ("adj", "adv", "noun", "verb")  # NLTK's all_synsets() order
_MARKER_RE = re.compile(r"\([^()]*\)$")


def candidate_dirs() -> list[Path]:
    dirs = [Path("/usr/share/wordnet"), Path("/usr/local/share/wordnet")]
    nltk_roots = [p for p in os.environ.get("NLTK_DATA", "").split(os.pathsep) if p]
    nltk_roots += [str(Path.home() / "nltk_data"), "/usr/share/nltk_data", "/usr/local/share/nltk_data",
                   "/usr/lib/nltk_data", "/usr/local/lib/nltk_data"]
    for root in nltk_roots:
        dirs.append(Path(root) / "corpora" / "wordnet")
    return dirs


def is_dict_dir(path: Path) -> bool:
    return all((Path(path) / f"data.{p}").is_file() for p in POS_FILES)


def find_dict_dir() -> Path | None:
    """The first WordNet dict dir found in the usual places, or None."""
    for d in candidate_dirs():
        if is_dict_dir(d):
            return d
    return None


def check_dict_dir(path) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise ClipcurateError(f"WordNet dict dir {str(path)!r} not found; pass --wordnet DIR (the folder "
                              f"with data.noun, e.g. /usr/share/wordnet from `apt-get install wordnet-base`) "
                              f"or --wordnet none")
    missing = [f"data.{p}" for p in POS_FILES if not (path / f"data.{p}").is_file()]
    if missing:
        raise ClipcurateError(f"WordNet dict dir {str(path)!r} has no {', '.join(missing)}; pass the folder "
                              f"that holds data.noun (WordNet 3.0 dict files)")
    return path


def head_lemmas(dict_dir) -> list[str]:
    """One entry per synset, in NLTK order (duplicates kept: the assembly deduplicates)."""
    d = check_dict_dir(dict_dir)
    out: list[str] = []
    for pos in POS_FILES:
        with open(d / f"data.{pos}", encoding="utf-8", errors="replace") as fh:
            for n, line in enumerate(fh, 1):
                if not line or line[0].isspace():
                    continue
                fields = line.split(" ", 5)
                if len(fields) < 5:
                    raise ClipcurateError(f"{d / ('data.' + pos)}: line {n} is not a WordNet synset line: {line[:60]!r}")
                word = _MARKER_RE.sub("", fields[4]).lower()
                out.append(word.split(".")[0].replace("_", " "))
    return out
