"""The options that several commands share, each defined once as a typer ``Annotated`` type::

    def status(ctx: typer.Context, fmt: FormatOption = Format.table): ...

The default stays in the command's signature; the flag, its short form and its help live here, so
``--format`` or ``--executor`` read the same in every command. ``--force`` is shared as a flag, but
what it redoes differs per command, so :func:`force_option` takes the help text.
"""

from __future__ import annotations

from enum import Enum
from typing import Annotated, List, Optional

import typer

from clipcurate.core.executor import EXECUTOR_HELP, RAY_ADDRESS_HELP, Kind


class Format(str, Enum):
    """How a command prints its table: a rich table, CSV or JSON lines."""

    table = "table"
    csv = "csv"
    json = "json"


class TableOrJson(str, Enum):
    """For output that is not one flat table (a list of nested records): a table or JSON."""

    table = "table"
    json = "json"


FormatOption = Annotated[Format, typer.Option("--format", "-f", help="table, csv or json.")]
TableOrJsonOption = Annotated[TableOrJson, typer.Option("--format", "-f", help="table or json.")]

# --executor local|ray and the Ray cluster to join (clipcurate.core.executor)
ExecutorOption = Annotated[Optional[Kind], typer.Option("--executor", help=EXECUTOR_HELP)]
RayAddressOption = Annotated[Optional[str], typer.Option("--ray-address", help=RAY_ADDRESS_HELP)]

DeviceOption = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N [config: auto].")]

# The image encoders of embed and eval (open_clip or the copy detector)
PrecisionOption = Annotated[Optional[str], typer.Option(
    "--precision", help="auto, fp32, bf16 or fp16 [auto: bf16 on CUDA].")]
BatchSizeOption = Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Images per forward pass [256].")]
DecodeWorkersOption = Annotated[Optional[int], typer.Option(
    "--workers", "-j", help="Decoding worker processes [-1: cores - 1].")]
BenchOption = Annotated[Optional[List[str]], typer.Option("--bench", help="Only this benchmark (repeatable) [all].")]


def force_option(text: str):
    """``--force``, with what it redoes in this command: ``force: force_option("...") = False``."""
    return Annotated[bool, typer.Option("--force", help=text)]
