"""Streaming reader for MediaWiki XML dumps: plain ``.xml``, ``.xml.bz2`` and multistream bz2.

A dump is ``<mediawiki version="0.10"><siteinfo>...</siteinfo><page>...</page>...</mediawiki>``.
We never build a tree: bytes go into an expat parser whose callbacks keep only ``<title>``,
``<ns>``, ``<redirect/>`` and the ``<text>`` of the (last) revision, and hand each finished page on.
Memory is one page plus one read buffer.

Multistream dumps (``pages-articles-multistream.xml.bz2``) are many bz2 streams glued together:
stream 0 holds the header (``<mediawiki>`` + ``<siteinfo>``), then each stream holds 100 pages,
and the last one ``</mediawiki>``. The index next to it (``...-multistream-index.txt.bz2``,
lines ``offset:page_id:title``) gives each stream's byte offset, so a worker can seek to any
stream and decompress a byte range on its own: :func:`plan_ranges` cuts a dump into such ranges
and :func:`iter_pages` reads one (wrapping its pages in a dummy root element for expat).

Decompression runs in a helper thread (bz2 releases the GIL), so it overlaps with parsing when a
second core is free. Every failure a user can cause — not bz2, truncated bz2, not XML, an export
schema we do not know — becomes one :class:`ClipcurateError` line naming the file.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import os
import queue
import re
import threading
from pathlib import Path
from typing import Callable, Iterator
from xml.parsers import expat

from clipcurate.core.errors import ClipcurateError

SUPPORTED_SCHEMAS = ("0.8", "0.9", "0.10", "0.11")
READ_SIZE = 1 << 20
MAX_OUT = 1 << 20  # largest decompressed chunk handed on (see _range_chunks): small enough to
# bound memory and to let a decompression thread and the C counter overlap well
_SCHEMA_RE = re.compile(r"export-(\d+\.\d+)/?$")
_END = b"</mediawiki>"


@dataclasses.dataclass
class Page:
    title: str
    ns: int
    redirect: bool
    text: str


@dataclasses.dataclass(frozen=True)
class Range:
    """A unit of work: ``path[start:end]`` (end None = to the end of the file).

    ``multistream`` ranges start on a stream boundary and hold pages without a root element.
    """

    path: str
    start: int = 0
    end: int | None = None
    multistream: bool = False


# -- opening ---------------------------------------------------------------------------------------

def _kind(path: Path) -> str:
    with open(path, "rb") as fh:
        head = fh.read(4)
    if head[:3] == b"BZh":
        return "bz2"
    if head[:2] == b"\x1f\x8b":
        return "gz"
    return "xml"


def _fail(path, what: str) -> ClipcurateError:
    return ClipcurateError(f"{path}: {what}")


def _decompress_errors(path, exc: BaseException) -> ClipcurateError:
    if isinstance(exc, EOFError):
        return _fail(path, "truncated bz2/gzip file (compressed data ends before the end-of-stream "
                           "marker); download the dump again")
    return _fail(path, f"corrupt compressed data ({exc}); download the dump again")


def _file_chunks(path: Path) -> Iterator[bytes]:
    """Decompressed bytes of a whole file (bz2 with any number of streams, gzip or plain)."""
    kind = _kind(path)
    if kind == "bz2":
        # Not bz2.open: BZ2File feeds the decompressor 8 KB at a time, and every call gives up and
        # takes back the GIL; when the parser thread holds it, each take-back waits up to the 5 ms
        # switch interval, which made the decompression thread *slower* than no thread at all.
        # One ``decompress`` call per 1 MB read keeps the handovers rare.
        yield from _range_chunks(Range(str(path)), trailing_ok=True)
        return
    opener = {"bz2": bz2.open, "gz": gzip.open, "xml": open}[kind]
    try:
        with opener(path, "rb") as fh:
            while True:
                chunk = fh.read(READ_SIZE)
                if not chunk:
                    return
                yield chunk
    except (EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise _fail(path, "file not found") from None
        raise _decompress_errors(path, exc) from None


def _range_chunks(rng: Range, trailing_ok: bool = False) -> Iterator[bytes]:
    """Decompressed bytes of the bz2 streams in ``[start, end)`` of a multistream file.

    ``trailing_ok``: bytes after the last complete stream that are not bz2 are ignored, as
    ``bz2.open`` does (used for whole files).
    """
    path = rng.path
    streams = 0
    with open(path, "rb") as fh:
        fh.seek(rng.start)
        left = None if rng.end is None else rng.end - rng.start
        dec = bz2.BZ2Decompressor()
        fed = False
        while left is None or left > 0:
            raw = fh.read(READ_SIZE if left is None else min(READ_SIZE, left))
            if not raw:
                break
            if left is not None:
                left -= len(raw)
            # At most MAX_OUT bytes per call, whatever the input: a crafted stream that expands
            # a thousandfold (a "bz2 bomb") costs MAX_OUT of memory at a time, not 1 GB per read.
            while True:
                try:
                    out = dec.decompress(raw, MAX_OUT)
                except (OSError, EOFError) as exc:
                    if trailing_ok and streams and not fed and isinstance(exc, OSError):
                        return
                    raise _decompress_errors(path, exc) from None
                fed = fed or bool(raw)
                raw = b""
                if out:
                    yield out
                if dec.eof:  # next stream: a fresh decompressor on the leftover bytes
                    streams += 1
                    raw = dec.unused_data
                    dec = bz2.BZ2Decompressor()
                    fed = False
                    if not raw:
                        break
                elif dec.needs_input:
                    break
                # else: more output is waiting in the decompressor; ask again with no input
        if fed and not dec.eof:
            raise _decompress_errors(path, EOFError())


def _threaded(gen: Iterator[bytes], depth: int = 8) -> Iterator[bytes]:
    """Run a chunk generator in a helper thread so decompression overlaps with parsing."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    DONE = object()

    def pump():
        try:
            for item in gen:
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            q.put(exc)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        t.join(timeout=5)


def _chunks(rng: Range, threaded: bool) -> Iterator[bytes]:
    """The decompressed bytes of a range (a multistream slice or a whole file), decompressed in a
    helper thread when ``threaded``."""
    chunks = _range_chunks(rng) if rng.multistream else _file_chunks(Path(rng.path))
    return _threaded(chunks) if threaded else chunks


# -- parsing ---------------------------------------------------------------------------------------

class _PageCollector:
    """expat callbacks that keep title, ns, redirect and text of each page."""

    def __init__(self, path: str, on_page: Callable[[Page], None], chunk_mode: bool):
        self.path = path
        self.on_page = on_page
        self.schema: str | None = None
        self.root_seen = chunk_mode
        self.chunk_mode = chunk_mode
        self.pages = 0
        self._field: str | None = None
        self._buf: list[str] = []
        self._title = ""
        self._ns = 0
        self._redirect = False
        self._text = ""
        self._in_revision = False

    def start(self, name, attrs):
        if name in ("title", "ns") and not self._in_revision:
            self._field = name
            self._buf = []
        elif name == "text":
            self._field = "text"
            self._buf = []
        elif name == "revision":
            self._in_revision = True
        elif name == "page":
            self._title, self._ns, self._redirect, self._text = "", 0, False, ""
        elif name == "redirect":
            self._redirect = True
        elif not self.root_seen:
            self.root_seen = True
            if name != "mediawiki":
                raise _fail(self.path, f"not a MediaWiki XML dump (root element <{name}>, expected <mediawiki>)")
            version = attrs.get("version")
            if version is None:
                m = _SCHEMA_RE.search(attrs.get("xmlns", ""))
                version = m.group(1) if m else None
            if version not in SUPPORTED_SCHEMAS:
                raise _fail(self.path, f"unknown export schema version {version!r}; supported: "
                                       f"{', '.join(SUPPORTED_SCHEMAS)} (MediaWiki export-0.8 … 0.11)")
            self.schema = version

    def end(self, name):
        if name == self._field:
            value = "".join(self._buf)
            if name == "title":
                self._title = value
            elif name == "ns":
                try:
                    self._ns = int(value)
                except ValueError:
                    self._ns = -1
            else:
                self._text = value
            self._field = None
            self._buf = []
        elif name == "revision":
            self._in_revision = False
        elif name == "page":
            self.pages += 1
            self.on_page(Page(self._title, self._ns, self._redirect, self._text))

    def chars(self, data):
        if self._field is not None:
            self._buf.append(data)


def _parser(collector: _PageCollector):
    p = expat.ParserCreate()
    p.buffer_text = True
    p.buffer_size = 1 << 16
    p.StartElementHandler = collector.start
    p.EndElementHandler = collector.end
    p.CharacterDataHandler = collector.chars
    return p


def iter_pages(rng: Range | str | os.PathLike, stats: dict | None = None,
               threaded: bool = True) -> Iterator[Page]:
    """Yield every page of a dump file (or of one multistream range), in order.

    ``stats`` (if given) receives ``bytes`` (decompressed XML read) and ``schema``.
    """
    if not isinstance(rng, Range):
        rng = Range(str(rng))
    path = rng.path
    if not Path(path).is_file():
        raise _fail(path, "file not found")
    if Path(path).stat().st_size == 0:
        raise _fail(path, "empty file, not a Wikipedia dump")
    pending: list[Page] = []
    collector = _PageCollector(path, pending.append, chunk_mode=rng.multistream)
    parser = _parser(collector)
    chunks = _chunks(rng, threaded)
    nbytes = 0
    carry = b""
    try:
        if rng.multistream:
            parser.Parse(b"<chunk>", False)
        for chunk in chunks:
            nbytes += len(chunk)
            if rng.multistream:
                # The last stream of a multistream file closes </mediawiki>, which our dummy root
                # would not accept: cut it out (it may straddle two chunks, hence the carry).
                chunk = carry + chunk
                if _END in chunk:
                    chunk = chunk.replace(_END, b"")
                carry, chunk = chunk[-len(_END):], chunk[:-len(_END)]
            parser.Parse(chunk, False)
            if pending:
                yield from pending
                pending.clear()
        if rng.multistream:
            parser.Parse(carry + b"</chunk>", True)
        else:
            parser.Parse(b"", True)
    except expat.ExpatError as exc:
        where = "" if rng.multistream else f" at line {exc.lineno}, column {exc.offset}"
        if collector.pages == 0 and not collector.root_seen or nbytes == 0:
            raise _fail(path, f"not XML ({expat.ErrorString(exc.code)}{where}); expected a "
                              f"pages-articles .xml or .xml.bz2 dump") from None
        raise _fail(path, f"malformed XML ({expat.ErrorString(exc.code)}{where}); the dump is "
                          f"damaged or truncated") from None
    yield from pending
    if stats is not None:
        stats["bytes"] = stats.get("bytes", 0) + nbytes
        stats["schema"] = collector.schema


def body_chunks(rng: Range | str | os.PathLike, stats: dict | None = None,
                threaded: bool = True) -> Iterator[bytes]:
    """The decompressed bytes of a dump (or multistream range) from its first ``<page>`` on, for
    the C page scanner (:mod:`queries.fastcount`); the header before it is checked by expat here.

    Raises :class:`HeaderUnsupported` when the header is anything but a well-formed
    ``<mediawiki>`` + ``<siteinfo>`` of a known schema in UTF-8 followed by a ``<page>`` (the
    caller then reads the range with :func:`iter_pages`, which gives the exact error, if any).
    ``stats`` receives ``bytes`` (all decompressed bytes, header included).
    """
    if not isinstance(rng, Range):
        rng = Range(str(rng))
    path = rng.path
    if not Path(path).is_file() or Path(path).stat().st_size == 0:
        raise HeaderUnsupported("missing or empty file")
    chunks = _chunks(rng, threaded)
    nbytes = 0
    try:
        if not rng.multistream:
            head = b""
            for chunk in chunks:
                nbytes += len(chunk)
                head += chunk
                if b"<page>" in head or len(head) > (16 << 20):
                    break
            at = head.find(b"<page>")
            if at < 0:
                raise HeaderUnsupported("no <page> in the first 16 MB")
            _check_header(path, head[:at])
            yield memoryview(head)[at:]  # no copy of the (up to 8 MB) first chunk
        for chunk in chunks:
            nbytes += len(chunk)
            yield chunk
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
    if stats is not None:
        stats["bytes"] = stats.get("bytes", 0) + nbytes


class HeaderUnsupported(Exception):
    """The dump header is not one the C page scanner may take for granted."""


def _check_header(path: str, head: bytes) -> None:
    decl = head[:200]
    if decl.startswith(b"<?xml") and b"encoding" in decl.split(b"?>", 1)[0]:
        enc = re.search(rb'encoding=["\']([^"\']+)', decl)
        if not enc or enc.group(1).lower().replace(b"-", b"") != b"utf8":
            raise HeaderUnsupported("not UTF-8")
    collector = _PageCollector(path, lambda page: None, chunk_mode=False)
    parser = _parser(collector)
    try:
        parser.Parse(head, False)
        parser.Parse(_END, True)
    except (expat.ExpatError, ClipcurateError) as exc:
        raise HeaderUnsupported(str(exc)) from None
    if collector.schema is None or collector.pages:
        raise HeaderUnsupported("no <mediawiki> header")


# -- multistream planning ---------------------------------------------------------------------------

def index_path(dump: str | os.PathLike) -> Path | None:
    """The ``-index.txt.bz2`` file next to a multistream dump, if there is one."""
    p = Path(dump)
    name = p.name
    for suffix in (".xml.bz2", ".bz2"):
        if name.endswith(suffix) and "multistream" in name:
            cand = p.with_name(name[: -len(suffix)] + "-index.txt.bz2")
            if cand.is_file():
                return cand
            cand = p.with_name(name[: -len(suffix)] + "-index.txt")
            if cand.is_file():
                return cand
    return None


def stream_offsets(index: str | os.PathLike) -> list[int]:
    """Sorted distinct stream offsets from a multistream index (``offset:page_id:title`` lines)."""
    index = Path(index)
    opener = bz2.open if _kind(index) == "bz2" else open
    offsets = set()
    try:
        with opener(index, "rb") as fh:
            for n, line in enumerate(fh, 1):
                head, sep, _ = line.partition(b":")
                if not sep:
                    if line.strip():
                        raise _fail(index, f"line {n} is not 'offset:page_id:title': {line[:60]!r}")
                    continue
                try:
                    offsets.add(int(head))
                except ValueError:
                    raise _fail(index, f"line {n} has a bad offset {head[:30]!r}") from None
    except (EOFError, OSError) as exc:
        raise _decompress_errors(index, exc) from None
    return sorted(offsets)


def read_header(path: str | os.PathLike, end: int) -> str:
    """Parse stream 0 of a multistream dump (``<mediawiki>`` + ``<siteinfo>``); return the schema."""
    collector = _PageCollector(str(path), lambda page: None, chunk_mode=False)
    parser = _parser(collector)
    try:
        for chunk in _range_chunks(Range(str(path), 0, end, True)):
            parser.Parse(chunk.replace(_END, b""), False)
        parser.Parse(_END, True)
    except expat.ExpatError as exc:
        raise _fail(path, f"not XML ({expat.ErrorString(exc.code)}); expected a pages-articles "
                          f"multistream dump") from None
    if collector.schema is None:
        raise _fail(path, "no <mediawiki> header in the first bz2 stream; is the index for this dump?")
    return collector.schema


def plan_ranges(dump: str | os.PathLike, chunk_bytes: int) -> list[Range]:
    """Cut one dump into ranges for workers: groups of whole bz2 streams of about ``chunk_bytes``
    compressed bytes when a multistream index is present, else the whole file as one range."""
    dump = Path(dump)
    if not dump.is_file():
        raise _fail(dump, "file not found")
    idx = index_path(dump)
    if idx is None:
        return [Range(str(dump))]
    offsets = stream_offsets(idx)
    size = dump.stat().st_size
    offsets = [o for o in offsets if 0 < o < size]
    if not offsets:
        return [Range(str(dump))]
    read_header(dump, offsets[0])
    ranges = []
    start = offsets[0]
    for o in offsets[1:]:
        if o - start >= chunk_bytes:
            ranges.append(Range(str(dump), start, o, True))
            start = o
    ranges.append(Range(str(dump), start, None, True))
    return ranges
