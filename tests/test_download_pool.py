"""The pool manifest and `write_pool_shard`, the helper other stages use to fake a pool."""

from __future__ import annotations

import hashlib
import json
import tarfile

import clipcurate.download as dl
from clipcurate.core import manifest as mf
from clipcurate.core import sql as sqlmod
from clipcurate.stages import status_rows
from clipcurate.core.synth import make_image


def test_write_pool_shard_layout(ws):
    samples = [{"url": f"http://img.example/{i}.jpg", "caption": f"a circle {i}", "image": make_image(i, i),
                "query_ids": [i, 7]} for i in range(3)]
    samples.append({"url": "http://img.example/bad.jpg", "caption": "gone"})
    samples.append({"url": "http://10.0.0.1/x.jpg", "caption": "inside", "status": "refused",
                    "error": "refused: private address"})
    counts = dl.write_pool_shard(ws, "00000", samples)
    assert counts == {"rows": 5, "success": 3, "failed": 1, "refused": 0 + 1}

    tbl = mf.read_all("pool", ws.root)
    assert tbl.schema.equals(mf.get("pool").schema, check_metadata=False)
    rows = tbl.to_pylist()
    assert [r["status"] for r in rows] == ["success"] * 3 + ["failed", "refused"]
    assert rows[3]["error"] and rows[0]["error"] is None
    assert rows[0]["query_ids"] == [0, 7]
    with tarfile.open(dl.shard_tar(ws, "00000")) as tf:
        names = tf.getnames()
        for r in rows[:3]:
            assert [f"{r['key']}.jpg", f"{r['key']}.txt", f"{r['key']}.json"] == \
                   [n for n in names if n.startswith(r["key"] + ".")]
            data = tf.extractfile(f"{r['key']}.jpg").read()
            assert hashlib.sha256(data).hexdigest() == r["sha256"]
            meta = json.loads(tf.extractfile(f"{r['key']}.json").read())
            assert meta["uid"] == r["uid"] and meta["url"] == r["url"] and meta["caption"] == r["caption"]
            assert tf.extractfile(f"{r['key']}.txt").read().decode() == r["caption"]
        assert len(names) == 9
    assert (ws.root / "pool" / "00000.done").exists()
    (row,) = [r for r in status_rows(ws) if r["stage"] == "download"]
    assert row["state"] == "done" and row["shards_done"] == row["shards_total"] == 1

    cols, out = sqlmod.query(ws, "download-failures")
    assert cols == ["status", "reason", "n"]
    assert out[0] == ("success", "", 3)
    assert set(out[1:]) == {("failed", "synthetic failure", 1), ("refused", "refused: private address", 1)}
