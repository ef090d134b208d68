"""`clipcurate download` when most rows are lost, and after the URL policy changes (issue 21, item 5):
a run where most rows were refused or failed warns, one line per reason, and still exits 0; a rerun
with --allow-private (no --force) fetches the refused rows and keeps every other row as it was."""

from __future__ import annotations

import json

import pytest

from _download_server import ImageServer, write_urls
from test_download import PUBLIC, check_pool_consistent, pool_rows


@pytest.mark.slow
def test_mostly_refused_warns_then_allow_private_retries_only_the_refused_rows(ws, cli, tmp_path):
    with ImageServer() as srv:
        public = [(f"http://{PUBLIC}:{srv.port}/img/{i}.jpg", f"public {i}") for i in range(4)]
        missing = [(f"http://{PUBLIC}:{srv.port}/404", "gone")]
        loopback = [(srv.url(f"/img/{10 + i}.jpg"), f"loopback {i}") for i in range(6)]
        # shards of 6: 00000 = 4 ok + the 404 + 1 loopback, 00001 = 5 loopback
        write_urls(tmp_path / "urls.parquet", public + missing + loopback)
        (ws.root / "clipcurate.toml").write_text(
            "[download]\n"
            f'allow_hosts = ["{PUBLIC}"]\n'
            "timeout = 2\nprocesses = 1\nsamples_per_shard = 6\nimage_size = 32\n"
            f'[download.hosts]\n"{PUBLIC}" = "127.0.0.1"\n')
        base = ["-w", ws.root, "download", "--input", tmp_path / "urls.parquet", "--format", "json"]

        first = cli(*base)
        assert first.code == 0, first.err
        warnings = [ln for ln in first.err.splitlines() if "warning:" in ln]
        assert any("7 of 11 rows were not stored" in ln for ln in warnings), first.err
        # one line per reason, the refusal naming the option that fetches it
        (refused_line,) = [ln for ln in warnings if "refused: loopback address" in ln]
        assert "6 rows refused" in refused_line and "--allow-private" in refused_line
        assert len([ln for ln in warnings if "1 rows failed: HTTP 404" in ln]) == 1
        before = {r["uid"]: r for r in pool_rows(ws)}
        hits_before = dict(srv.hits)
        assert hits_before.get("/img/10.jpg", 0) == 0

        second = cli(*base, "--allow-private")
        assert second.code == 0, second.err
        assert "already done" not in second.err
        assert "retrying their 6 refused rows" in second.err
        assert "warning:" not in second.err  # 10 of 11 stored now
        hits_after = dict(srv.hits)

        third = cli(*base, "--allow-private")
        assert third.code == 0 and "2/2 shards already done" in third.err, third.err
        assert dict(srv.hits) == hits_after  # nothing left to fetch

    summary = {d["status"]: d["rows"] for d in map(json.loads, second.out.splitlines())}
    assert summary == {"success": 10, "failed": 1, "refused": 0, "total": 11}
    rows = check_pool_consistent(ws, 11)
    by_uid = {r["uid"]: r for r in rows}
    for uid, old in before.items():  # rows settled by the first run are kept as they were
        if old["status"] != "refused":
            assert by_uid[uid] == old
    assert {by_uid[u]["status"] for u, o in before.items() if o["status"] == "refused"} == {"success"}
    # Only the refused rows were requested again: each loopback image once, nothing else twice.
    for i in range(4):
        assert hits_after[f"/img/{i}.jpg"] == hits_before[f"/img/{i}.jpg"] == 1
    assert hits_after["/404"] == hits_before["/404"] == 1
    assert all(hits_after[f"/img/{10 + i}.jpg"] == 1 for i in range(6))
