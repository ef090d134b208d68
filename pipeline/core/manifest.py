"""Parquet manifests: one registered schema per manifest, with a schema version.

Each manifest is declared once with :func:`register` — its name (also its DuckDB view name), the
glob of its files inside the workspace, its columns (pyarrow types + a one-line description) and a
schema version. :func:`write` refuses a table whose columns do not match the declaration and stores
the version in the Parquet footer, so a reader can tell an old file from a new one.
``docs/workspace.md`` is generated from this registry in the order of the stage list
(``python -m clipcurate.stages``, which calls :func:`render_markdown`), and a test fails when the two
disagree. Stage modules register at import; core imports no stage, so whoever needs every manifest
imports the stages first (``clipcurate.stages.load()``: the CLI does, once per command).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import atomic_path

META_NAME = b"clipcurate.manifest"
META_VERSION = b"clipcurate.schema_version"


@dataclasses.dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str


@dataclasses.dataclass(frozen=True)
class Manifest:
    name: str
    version: int
    glob: str  # relative to the workspace root; may contain * and **
    columns: tuple[Column, ...]
    doc: str
    stage: str
    # Columns that the DuckDB view leaves out (e.g. raw image bytes).
    view_exclude: tuple[str, ...] = ()

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.type) for c in self.columns],
            metadata={META_NAME: self.name.encode(), META_VERSION: str(self.version).encode()},
        )

    def files(self, root: Path) -> list[Path]:
        return sorted(p for p in Path(root).glob(self.glob) if p.is_file() and not p.name.startswith("."))


REGISTRY: dict[str, Manifest] = {}


def register(name: str, *, version: int, glob: str, stage: str, doc: str,
             columns: Sequence[tuple[str, pa.DataType, str]], view_exclude: Sequence[str] = ()) -> Manifest:
    """Declare a manifest. Stage modules call this at import time."""
    m = Manifest(name=name, version=version, glob=glob, stage=stage, doc=doc,
                 columns=tuple(Column(*c) for c in columns), view_exclude=tuple(view_exclude))
    REGISTRY[name] = m
    return m


def get(name: str) -> Manifest:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ClipcurateError(f"unknown manifest {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


def table(manifest: Manifest | str, rows: dict[str, Iterable] | list[dict]) -> pa.Table:
    """Build a table with the manifest's exact schema from columns (dict) or rows (list of dicts)."""
    m = get(manifest) if isinstance(manifest, str) else manifest
    if isinstance(rows, list):
        cols = {c.name: [r.get(c.name) for r in rows] for c in m.columns}
    else:
        cols = rows
    missing = [c.name for c in m.columns if c.name not in cols]
    extra = [k for k in cols if k not in {c.name for c in m.columns}]
    if missing or extra:
        raise ValueError(f"manifest {m.name}: missing columns {missing}, unexpected columns {extra}")
    arrays = [pa.array(list(cols[c.name]) if not isinstance(cols[c.name], (pa.Array, pa.ChunkedArray)) else cols[c.name],
                       type=c.type) for c in m.columns]
    return pa.Table.from_arrays(arrays, schema=m.schema)


def write(manifest: Manifest | str, tbl: pa.Table | dict | list, path: str | Path) -> Path:
    """Write a manifest file atomically after checking its schema."""
    m = get(manifest) if isinstance(manifest, str) else manifest
    if not isinstance(tbl, pa.Table):
        tbl = table(m, tbl)
    names = [c.name for c in m.columns]
    if tbl.column_names != names:
        raise ValueError(f"manifest {m.name}: columns {tbl.column_names} != declared {names}")
    tbl = tbl.cast(m.schema)
    path = Path(path)
    with atomic_path(path) as tmp:
        pq.write_table(tbl, tmp, compression="zstd")
    return path


def read(manifest: Manifest | str, path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read one manifest file, checking that it is the manifest and version we expect."""
    m = get(manifest) if isinstance(manifest, str) else manifest
    path = Path(path)
    try:
        pf = pq.ParquetFile(path)
    except FileNotFoundError:
        raise ClipcurateError(f"{path}: file not found") from None
    except Exception as exc:
        raise ClipcurateError(f"{path}: not a readable Parquet file ({exc.__class__.__name__}); delete it and rerun the stage") from None
    meta = pf.schema_arrow.metadata or {}
    version = meta.get(META_VERSION)
    if version is not None and int(version) != m.version:
        raise ClipcurateError(
            f"{path}: {m.name} schema version {int(version)}, this clipcurate reads version {m.version}; "
            f"rerun the stage with --force")
    return pf.read(columns=columns)


def read_all(manifest: Manifest | str, root: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Concatenate every file of a manifest in a workspace (empty table if none)."""
    m = get(manifest) if isinstance(manifest, str) else manifest
    parts = [read(m, p, columns) for p in m.files(Path(root))]
    if not parts:
        schema = m.schema if columns is None else pa.schema([m.schema.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(parts)


def count_rows(manifest: Manifest | str, root: str | Path) -> int:
    m = get(manifest) if isinstance(manifest, str) else manifest
    return sum(pq.ParquetFile(p).metadata.num_rows for p in m.files(Path(root)))


def render_markdown(stage_order: Sequence[str]) -> str:
    """docs/workspace.md from the registry: manifests grouped by stage in ``stage_order`` (a stage
    not in it comes last), by name within a stage."""
    rank = {stage: i for i, stage in enumerate(stage_order)}
    lines = [
        "# The workspace",
        "",
        "<!-- generated by `python -m clipcurate.stages > docs/workspace.md`; tests/test_docs.py fails when stale -->",
        "",
        "Everything clipcurate writes lands in one folder (`--workspace/-w`, env `CLIPCURATE_WORKSPACE`,",
        "default `./workspace`), one subfolder per stage. Manifests are Parquet files whose footer carries",
        "`clipcurate.manifest` and `clipcurate.schema_version`; `clipcurate sql` (and the DuckDB file",
        "`clipcurate.duckdb` in the workspace) exposes each manifest as a view of the same name.",
        "",
    ]
    for m in sorted(REGISTRY.values(), key=lambda m: (rank.get(m.stage, len(rank)), m.name)):
        lines += [f"## `{m.name}` (schema version {m.version})", "", m.doc, "",
                  f"- stage: `{m.stage}`", f"- files: `{m.glob}`"]
        if m.view_exclude:
            lines.append(f"- the view leaves out: {', '.join('`%s`' % c for c in m.view_exclude)}")
        lines += ["", "| column | type | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{c.name}` | `{c.type}` | {c.doc} |" for c in m.columns]
        lines.append("")
    return "\n".join(lines)

