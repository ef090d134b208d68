"""`clipcurate run` (steps in order, skip finished, one-line failures) and `clipcurate demo`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from clipcurate.run import runner as runmod

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy_steps(monkeypatch):
    calls = []

    def ok(ws, n=1, path=None):
        calls.append(("ok", n, path))
        return {"n": n}

    def boom(ws, fail=True):
        calls.append(("boom", fail))
        if fail:
            from clipcurate.core.errors import ClipcurateError

            raise ClipcurateError("the toy stage broke: set fail = false")
        return {}

    monkeypatch.setitem(runmod.STEPS, "toy.ok", (ok, "clipcurate toy ok"))
    monkeypatch.setitem(runmod.STEPS, "toy.boom", (boom, "clipcurate toy boom"))
    return calls


def write(p: Path, text: str) -> Path:
    p.write_text(text)
    return p


def test_run_skips_finished_steps_and_names_the_failing_one(ws, cli, toy_steps, tmp_path):
    f = write(tmp_path / "p.toml", '[[step]]\nrun = "toy.ok"\nn = 1\npath = "data/x"\n\n'
                                   '[[step]]\nrun = "toy.boom"\n\n[[step]]\nrun = "toy.ok"\nn = 3\n')
    r = cli("-w", ws.root, "run", f)
    assert r.code == 1 and "Traceback" not in r.err
    err = [line for line in r.err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "step 02-toy-boom" in err[0] and "set fail = false" in err[0]
    assert toy_steps == [("ok", 1, str(tmp_path / "data" / "x")), ("boom", True)]  # paths resolved vs the file
    # fix the pipeline and rerun: the finished first step is skipped, the rest runs
    write(f, f.read_text().replace('run = "toy.boom"', 'run = "toy.boom"\nfail = false'))
    r = cli("-w", ws.root, "run", f)
    assert r.code == 0, r.err
    assert toy_steps[2:] == [("boom", False), ("ok", 3, None)]
    assert (ws.root / "run" / "_SUCCESS").exists()
    r = cli("-w", ws.root, "status", "--format", "json")
    run_row = [json.loads(line) for line in r.out.splitlines() if json.loads(line)["stage"] == "run"][0]
    assert run_row["state"] == "done" and run_row["shards_done"] == run_row["shards_total"] == 3
    # a changed parameter reruns that step only
    write(f, f.read_text().replace("n = 3", "n = 4"))
    cli("-w", ws.root, "run", f)
    assert toy_steps[4:] == [("ok", 4, None)]


def test_run_bad_pipeline_files(ws, cli, tmp_path, toy_steps):
    r = cli("-w", ws.root, "run", write(tmp_path / "a.toml", '[[step]]\nrun = "nosuch"\n'))
    assert r.code == 1 and "run = 'nosuch'" in r.err and "known steps" in r.err
    r = cli("-w", ws.root, "run", write(tmp_path / "b.toml", 'workspace = "x"\n'))
    assert r.code == 1 and "no [[step]]" in r.err
    r = cli("-w", ws.root, "run", write(tmp_path / "c.toml", '[[step]]\nrun = "toy.ok"\nbogus = 1\n'))
    assert r.code == 1 and "bad parameters" in r.err
    r = cli("-w", ws.root, "run", tmp_path / "missing.toml")
    assert r.code == 1 and "not found" in r.err


def test_example_demo_pipeline_is_the_one_the_demo_runs():
    assert (REPO / "examples" / "demo" / "pipeline.toml").read_text() == \
        (REPO / "pipeline" / "run" / "demo_pipeline.toml").read_text()
    p = runmod.Pipeline.load(REPO / "examples" / "demo" / "pipeline.toml")
    assert [s["run"] for s in p.steps][:3] == ["queries.build", "queries.match", "download"]
    p = runmod.Pipeline.load(REPO / "examples" / "laion-cifar10" / "pipeline.toml")
    assert "embed" in [s["run"] for s in p.steps]


@pytest.mark.slow
def test_demo_tiny_end_to_end_then_skips(tmp_path, cli, monkeypatch):
    for k in [k for k in __import__("os").environ if k.startswith("CLIPCURATE_")]:
        monkeypatch.delenv(k)
    ws = tmp_path / "demo"
    r = cli("demo", "--workspace", ws, "--size", "tiny")
    assert r.code == 0, r.err[-3000:]
    # open_clip_train's log stays in its file (train/{run}/train.log); the terminal gets one progress bar
    assert "INFO" not in r.err and "Train Epoch" not in r.err and "train epoch 10/10" in r.err
    assert "Train Epoch" in (ws / "train" / "all" / "train.log").read_text()
    # every stage wrote its manifest
    from clipcurate.core import manifest as mf

    for name in ("queries", "candidates", "entry_counts", "pool", "benchmarks", "embeddings", "pairs", "splits",
                 "decontam", "curated", "predictions", "eval", "compare"):
        assert mf.count_rows(name, ws) > 0, name
    pool = pq.read_table(next((ws / "pool" / "manifest").glob("*.parquet"))).to_pylist()
    assert {p["status"] for p in pool} >= {"success"}
    assert "planted copies in the pool" in r.out and "detector precision / recall" in r.out
    assert (next((ws / "eval").glob("*/figure17.png"))).stat().st_size > 0
    # the decisions the demo made are marked as automatic
    recs = [json.loads(line) for line in (ws / "review" / "decisions.jsonl").read_text().splitlines()]
    assert recs and {r["source"] for r in recs} == {"auto-demo"}
    # status: every stage done; a second run skips every step
    r2 = cli("-w", ws, "status", "--format", "json")
    states = {json.loads(line)["stage"]: json.loads(line)["state"] for line in r2.out.splitlines()}
    for stage in ("queries", "candidates", "download", "embed", "overlap", "curate", "train", "eval", "run"):
        assert states.get(stage) == "done", (stage, states)
    r3 = cli("demo", "--workspace", ws, "--size", "tiny")
    n_steps = len(runmod.Pipeline.load(ws / "pipeline.toml").steps)
    assert r3.code == 0 and r3.err.count("done earlier, skipping") == n_steps

    # the counterfactual, in direction: the model trained on the pool as downloaded does better on
    # Overlap than on Clean, and better on those same Overlap samples than the model trained on the
    # decontaminated pool — by more than on Clean
    cmp = pq.read_table(next((ws / "eval").glob("compare-all-vs-clean/compare.parquet"))).to_pylist()
    ev = {(r["model_tag"], r["benchmark"]): r for r in mf.read_all("eval", ws).to_pylist()}
    by = {(r["benchmark"], r["split"]): r for r in cmp}
    effects = []
    for (bench, split), r in by.items():
        if split != "overlap" or not r["n"]:
            continue
        s5 = ev[(r["model_a"], bench)]
        effects.append((s5["acc_overlap"] - s5["acc_clean"], r["diff"] - by[(bench, "clean")]["diff"]))
    assert effects and all(a > 0 and b > 0 for a, b in effects), effects
    assert "counterfactual" in r.out and "§5" in r.out

    # the same seed on the same machine: a second demo in another workspace writes identical tables
    ws2 = tmp_path / "demo2"
    assert cli("demo", "--workspace", ws2, "--size", "tiny").code == 0
    for rel in ("overlap/splits.parquet", "overlap/decontam.parquet"):
        assert pq.read_table(ws / rel).equals(pq.read_table(ws2 / rel)), rel
    for f in sorted((ws / "eval").glob("*/eval.parquet")) + sorted((ws / "eval").glob("*/compare.parquet")):
        assert pq.read_table(f).equals(pq.read_table(ws2 / f.relative_to(ws))), f
