"""Ray stays optional: without it, `--executor ray` says how to get it (no Ray started here)."""

from __future__ import annotations

import sys

import pytest

from clipcurate.core.errors import ClipcurateError, MissingDependency
from clipcurate.core.executor import LocalExecutor, get_executor


def test_without_ray_the_message_says_how_to_get_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(MissingDependency) as err:
        get_executor("ray")
    assert str(err.value) == "pip install 'clipcurate[ray]' to use --executor ray"


def test_local_is_the_default_and_unknown_kinds_are_refused():
    assert isinstance(get_executor(), LocalExecutor) and isinstance(get_executor(None), LocalExecutor)
    with pytest.raises(ClipcurateError, match="unknown executor 'spark'"):
        get_executor("spark")


def test_local_map_shards_marks_skips_and_keeps_order(tmp_path):
    calls = []

    def fn(shard):
        calls.append(shard)
        return {"n": int(shard)}

    ex = get_executor("local")
    assert ex.map_shards(fn, ["2", "0", "1"], folder=tmp_path) == [{"n": 2}, {"n": 0}, {"n": 1}]
    again = ex.map_shards(fn, ["2", "0", "1", "3"], folder=tmp_path)
    assert calls == ["2", "0", "1", "3"]  # the finished shards were not run again
    assert [i["n"] for i in again] == [2, 0, 1, 3]
    ex.map_shards(fn, ["0"], folder=tmp_path, force=True)
    assert calls[-1] == "0"
    with pytest.raises(ValueError):
        ex.map_shards(fn, ["0", "0"])


@pytest.mark.parametrize("command", [["download"], ["embed"], ["overlap"], ["detector", "hashes"]])
def test_cli_executor_ray_without_ray_says_how_to_get_it(ws, cli, monkeypatch, command):
    monkeypatch.setitem(sys.modules, "ray", None)
    r = cli("-w", ws.root, *command, "--executor", "ray")
    assert r.code == 1 and "Traceback" not in r.err
    assert "pip install 'clipcurate[ray]' to use --executor ray" in r.err


def test_cli_unknown_executor_is_a_usage_error(ws, cli):
    r = cli("-w", ws.root, "overlap", "--executor", "spark")
    assert r.code == 2


def test_executor_from_config_file_and_environment(ws, monkeypatch):
    from clipcurate.core.config import Config
    from clipcurate.core.executor import from_config

    (ws.root / "clipcurate.toml").write_text('[executor]\nkind = "ray"\n')
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency):  # the file asked for ray
        from_config(Config.load(ws.root))
    assert from_config(Config.load(ws.root), "local").kind == "local"  # the command line wins
    monkeypatch.setenv("CLIPCURATE_EXECUTOR__KIND", "local")
    assert from_config(Config.load(ws.root)).kind == "local"  # the environment beats the file
    (ws.root / "clipcurate.toml").write_text('[executor]\ngpus_per_task = "lots"\n')
    with pytest.raises(ClipcurateError, match="gpus_per_task 'lots'"):
        from_config(Config.load(ws.root))
