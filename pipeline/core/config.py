"""Configuration: ``clipcurate.toml`` in the workspace (or ``--config FILE``).

Each stage declares a section with its defaults (:func:`section`). Values come from, highest first:

1. the command line (options the user actually passed),
2. the environment: ``CLIPCURATE_<SECTION>__<KEY>`` (e.g. ``CLIPCURATE_DOWNLOAD__THREADS=8``),
3. the config file (``[download]`` ``threads = 8``),
4. the defaults.

An unknown section or key — in the file or the environment — is an error that names it. Values
are coerced to the type of the default (bool, int, float, str, list); a dict-valued default is a
free-form table (e.g. per-benchmark thresholds).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from clipcurate.core.errors import ClipcurateError

ENV_PREFIX = "CLIPCURATE_"
GLOBAL_ENV = {"CLIPCURATE_WORKSPACE", "CLIPCURATE_CONFIG", "CLIPCURATE_SHARED"}

SECTIONS: dict[str, dict[str, Any]] = {}
DOCS: dict[str, dict[str, str]] = {}


def section(name: str, defaults: Mapping[str, Any], docs: Mapping[str, str] | None = None) -> None:
    """Declare a config section and its defaults (stage modules call this at import)."""
    SECTIONS[name] = dict(defaults)
    DOCS[name] = dict(docs or {})


def _coerce(value: Any, default: Any, where: str) -> Any:
    if default is None or isinstance(default, dict):
        return value
    want = type(default)
    if isinstance(value, want) and not (want is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        try:
            if want is bool:
                low = value.strip().lower()
                if low in ("1", "true", "yes", "on"):
                    return True
                if low in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if want is list:
                return [v.strip() for v in value.split(",") if v.strip()]
            return want(value)
        except ValueError:
            raise ClipcurateError(f"{where}: {value!r} is not a valid {want.__name__}") from None
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if want is list and isinstance(value, tuple):
        return list(value)
    raise ClipcurateError(f"{where}: {value!r} is not a valid {want.__name__}")


def read_file(path: Path) -> dict:
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ClipcurateError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ClipcurateError(f"config file {str(path)!r} is not valid TOML: {exc}") from None
    return data


def validate(data: Mapping[str, Any], origin: str) -> None:
    """Reject unknown sections and keys, naming them."""
    for sec, values in data.items():
        if sec not in SECTIONS:
            raise ClipcurateError(
                f"{origin}: unknown section [{sec}]; known sections: {', '.join(sorted(SECTIONS))}")
        if not isinstance(values, Mapping):
            raise ClipcurateError(f"{origin}: [{sec}] must be a table")
        for key in values:
            if key not in SECTIONS[sec]:
                raise ClipcurateError(
                    f"{origin}: unknown key {key!r} in [{sec}]; known keys: {', '.join(sorted(SECTIONS[sec]))}")


def env_values(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    environ = os.environ if environ is None else environ
    out: dict[str, dict[str, Any]] = {}
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or name in GLOBAL_ENV or "__" not in name:
            continue
        sec, _, key = name[len(ENV_PREFIX):].lower().partition("__")
        if sec not in SECTIONS:
            raise ClipcurateError(f"environment variable {name}: unknown section {sec!r}")
        if key not in SECTIONS[sec]:
            raise ClipcurateError(f"environment variable {name}: unknown key {key!r} in [{sec}]")
        out.setdefault(sec, {})[key] = value
    return out


class Config:
    """Merged configuration; ``cfg.get("download")`` returns that section as a dict."""

    def __init__(self, file_data: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                 origin: str = "config"):
        self.file_data = dict(file_data or {})
        validate(self.file_data, origin)
        self.env_data = env_values(environ)
        self.origin = origin

    @classmethod
    def load(cls, workspace_root: Path | None, config_file: str | os.PathLike | None = None,
             environ: Mapping[str, str] | None = None) -> "Config":
        """``config_file`` (or ``$CLIPCURATE_CONFIG``), else the workspace's clipcurate.toml, else
        defaults only. The file is checked against the sections declared so far: import the stages
        first (``clipcurate.stages.load()``, as the CLI does) or a stage's section is unknown."""
        environ = os.environ if environ is None else environ
        path = config_file or environ.get("CLIPCURATE_CONFIG")
        if path:
            p = Path(path)
            return cls(read_file(p), environ, origin=str(p))
        if workspace_root is not None and (Path(workspace_root) / "clipcurate.toml").is_file():
            p = Path(workspace_root) / "clipcurate.toml"
            return cls(read_file(p), environ, origin=str(p))
        return cls({}, environ)

    def get(self, sec: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if sec not in SECTIONS:
            raise ClipcurateError(f"unknown config section {sec!r}")
        defaults = SECTIONS[sec]
        merged = dict(defaults)
        for layer, origin in ((self.file_data.get(sec, {}), self.origin),
                              (self.env_data.get(sec, {}), "environment"),
                              ({k: v for k, v in (overrides or {}).items() if v is not None}, "command line")):
            for key, value in layer.items():
                if key not in defaults:
                    raise ClipcurateError(f"{origin}: unknown key {key!r} in [{sec}]")
                merged[key] = _coerce(value, defaults[key], f"{origin} [{sec}] {key}")
        return merged
