"""`bench add` / `bench list`: every source kind, on data the tests make."""

from __future__ import annotations

import hashlib
import json
from urllib.error import URLError

import pyarrow.parquet as pq
import pytest

from clipcurate.bench import stage as bench
from clipcurate.core.uid import make_uid

from _embed_helpers import captions_folder, captions_parquet, folder_tree, hf_parquet, wds_tar

COLUMNS = ["uid", "benchmark", "index", "label", "label_name", "captions", "width", "height", "sha256", "image"]


def _check_rows(ws, name):
    b = bench.load(ws, name)
    assert b.samples.column_names == COLUMNS
    for r in b.samples.to_pylist():
        assert r["sha256"] == hashlib.sha256(r["image"]).hexdigest()
        assert r["uid"] == make_uid("bench", name, r["index"], r["sha256"])
        assert r["benchmark"] == name and r["width"] > 0 and r["height"] > 0
    return b


def test_folder_tree_classes_from_folders_and_broken_image_counted(ws, tmp_path):
    src = folder_tree(tmp_path / "tree")
    meta = bench.add(ws, "tree", str(src))
    assert meta["kind"] == "classification" and meta["n"] == 9 and meta["n_skipped"] == 1
    assert "undecodable" in meta["skipped"][0]
    b = _check_rows(ws, "tree")
    assert b.classes == ["circle", "square", "triangle"]
    assert b.templates == list(bench.DEFAULT_TEMPLATES)
    rows = b.samples.to_pylist()
    # circle/0..2 then circle/zz_broken (index 3, skipped) then square/...: indices stay source positions
    assert [r["index"] for r in rows] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert [r["label_name"] for r in rows] == ["circle"] * 3 + ["square"] * 3 + ["triangle"] * 3
    assert all(r["captions"] == [] for r in rows)
    # re-adding the same source gives the same uids (stable)
    bench.add(ws, "tree", str(src), force=True)
    assert bench.load(ws, "tree").samples.column("uid").to_pylist() == b.samples.column("uid").to_pylist()


def test_folder_tree_class_names_file(ws, tmp_path):
    src = folder_tree(tmp_path / "tree", broken=False)
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"circle": "round thing", "square": "box", "triangle": "tri"}))
    bench.add(ws, "t", str(src), classes=str(names))
    assert bench.load(ws, "t").classes == ["round thing", "box", "tri"]
    bad = tmp_path / "two.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(bench.ClipcurateError, match="lists 2 names but .* has 3 class folders"):
        bench.add(ws, "t2", str(src), classes=str(bad))


@pytest.mark.parametrize("struct", [True, False])
def test_hf_parquet_export(ws, tmp_path, struct):
    src = hf_parquet(tmp_path / "hf.parquet", struct=struct)
    if struct:  # class names from the Hugging Face ClassLabel metadata
        bench.add(ws, "hf", str(src))
    else:
        with pytest.raises(bench.ClipcurateError, match="ClassLabel|--classes"):
            pq.write_table(pq.read_table(src).replace_schema_metadata(None), src)
            bench.add(ws, "hf", str(src))
        names = tmp_path / "names.txt"
        names.write_text("circle\nsquare\ntriangle\n")
        bench.add(ws, "hf", str(src), classes=str(names))
    b = _check_rows(ws, "hf")
    assert b.kind == "classification" and b.classes == ["circle", "square", "triangle"]
    assert b.samples.column("label").to_pylist() == [i % 3 for i in range(9)]
    assert b.samples.column("index").to_pylist() == list(range(9))


def test_parquet_string_labels(ws, tmp_path):
    src = hf_parquet(tmp_path / "s.parquet", string_labels=True)
    bench.add(ws, "s", str(src))
    b = _check_rows(ws, "s")
    assert b.classes == ["circle", "square", "triangle"]
    assert b.samples.column("label_name").to_pylist() == [b.classes[i % 3] for i in range(9)]


def test_parquet_captions(ws, tmp_path):
    bench.add(ws, "caps", str(captions_parquet(tmp_path / "c.parquet")))
    b = _check_rows(ws, "caps")
    assert b.kind == "captions" and b.classes == []
    assert b.samples.column("label").null_count == b.samples.num_rows
    assert [len(c) for c in b.samples.column("captions").to_pylist()] == [1, 2, 3, 1]
    assert b.meta["n_captions"] == 7


def test_webdataset_tar_classification_needs_class_names(ws, tmp_path, cli):
    src = wds_tar(tmp_path / "w.tar")
    r = cli("-w", ws.root, "bench", "add", "w", "--from", src)
    assert r.code == 1 and "--classes" in r.err and "Traceback" not in r.err
    names = tmp_path / "names.txt"
    names.write_text("circle\nsquare\n")
    r = cli("-w", ws.root, "bench", "add", "w", "--from", src, "--classes", names)
    assert r.code == 0, r.err
    b = _check_rows(ws, "w")
    assert b.samples.column("label").to_pylist() == [i % 2 for i in range(6)]


def test_webdataset_tar_captions(ws, tmp_path):
    bench.add(ws, "wc", str(wds_tar(tmp_path / "wc.tar", labels=False)))
    b = _check_rows(ws, "wc")
    assert b.kind == "captions"
    assert b.samples.column("captions").to_pylist()[1] == ["a square", "another caption 1"]


def test_captions_folder(ws, tmp_path):
    bench.add(ws, "cf", str(captions_folder(tmp_path / "cf")))
    b = _check_rows(ws, "cf")
    assert b.kind == "captions" and b.samples.num_rows == 3
    assert b.samples.column("captions").to_pylist()[2] == ["cap 2", "other 2"]


class _TinyTV:
    """Stands in for a torchvision dataset class (no download possible in tests)."""

    classes = ["cat", "dog"]

    def __init__(self, root, train=True, download=False):
        assert train is False and download is True
        from clipcurate.core.synth import make_image

        self.items = [(make_image(i % 2, i, size=32), i % 2) for i in range(5)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class _OfflineTV(_TinyTV):
    def __init__(self, root, train=True, download=False):
        raise URLError("[Errno -2] Name or service not known")


def test_torchvision_source(ws, tmp_path, monkeypatch):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "TinyTV", _TinyTV, raising=False)
    meta = bench.add(ws, "tv", "torchvision:TinyTV", cache_dir=str(tmp_path / "cache"))
    assert meta["n"] == 5 and meta["source"].startswith("torchvision:TinyTV")
    b = _check_rows(ws, "tv")
    assert b.classes == ["cat", "dog"] and b.samples.column("label").to_pylist() == [0, 1, 0, 1, 0]


def test_torchvision_without_internet_is_one_clear_line(ws, tmp_path, monkeypatch, cli):
    import torchvision.datasets

    monkeypatch.setattr(torchvision.datasets, "OfflineTV", _OfflineTV, raising=False)
    monkeypatch.setenv("CLIPCURATE_BENCH__CACHE_DIR", str(tmp_path / "cache"))
    r = cli("-w", ws.root, "bench", "add", "x", "--from", "torchvision:OfflineTV")
    assert r.code == 1
    assert "could not be downloaded" in r.err and "no internet?" in r.err and "Traceback" not in r.err
    r = cli("-w", ws.root, "bench", "add", "x", "--from", "torchvision:NoSuchSet")
    assert r.code == 1 and "has no dataset 'NoSuchSet'" in r.err


def test_existing_benchmark_needs_force_and_list(ws, tmp_path, cli):
    src = folder_tree(tmp_path / "tree", broken=False)
    tpl = tmp_path / "t.txt"
    tpl.write_text("a {} here.\nanother {}.\n")
    assert cli("-w", ws.root, "bench", "add", "a", "--from", src, "--templates", tpl).code == 0
    r = cli("-w", ws.root, "bench", "add", "a", "--from", src)
    assert r.code == 1 and "--force" in r.err
    assert cli("-w", ws.root, "bench", "add", "a", "--from", src, "--force").code == 0
    assert bench.load(ws, "a").templates == list(bench.DEFAULT_TEMPLATES)
    assert cli("-w", ws.root, "bench", "add", "b", "--from", captions_parquet(tmp_path / "c.parquet")).code == 0
    r = cli("-w", ws.root, "bench", "list", "--format", "json")
    rows = [json.loads(line) for line in r.out.splitlines()]
    assert [(x["name"], x["kind"], x["n"]) for x in rows] == [("a", "classification", 9), ("b", "captions", 4)]
    assert not list((ws.root / "benchmarks").glob(".staging/*"))  # nothing left half-written
    # the manifest view leaves the image bytes out
    r = cli("-w", ws.root, "sql", "select benchmark, count(*) n from benchmarks group by 1 order by 1", "-f", "csv")
    assert r.out.splitlines() == ["benchmark,n", "a,9", "b,4"]
    r = cli("-w", ws.root, "sql", "select image from benchmarks")
    assert r.code == 1


def test_bad_inputs_are_one_line(ws, tmp_path, cli):
    r = cli("-w", ws.root, "bench", "add", "x", "--from", tmp_path / "nope")
    assert r.code == 1 and "not found" in r.err
    r = cli("-w", ws.root, "bench", "add", "bad name", "--from", tmp_path)
    assert r.code == 1 and "benchmark name" in r.err
    tpl = tmp_path / "t.txt"
    tpl.write_text("no placeholder\n")
    r = cli("-w", ws.root, "bench", "add", "x", "--from", folder_tree(tmp_path / "tr"), "--templates", tpl)
    assert r.code == 1 and "{}" in r.err
    with pytest.raises(bench.MissingUpstream, match="bench add nope"):
        bench.load(ws, "nope")
