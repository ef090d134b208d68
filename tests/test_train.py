"""Stage `train`: open_clip_train in process on curated shards; loss falls; resume; errors."""

from __future__ import annotations

import json

import pytest

from tests._curate_helpers import make_class_bench, make_pool, write_splits


@pytest.fixture
def one_thread():
    """One intra-op thread: the tiny model gains nothing from more, and a busy 2-core box loses a lot."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.mark.slow
def test_tiny_model_trains_loss_falls_resumes_and_checkpoint_feeds_embed_and_eval(ws, tmp_path, cli, one_thread):
    from clipcurate.curate import curate
    from clipcurate.train import train

    make_pool(ws, n=200, shards=2, size=32)
    curate(ws, shard_size=100, decontam=False)
    res = train(ws, "tiny", batch_size=16, epochs=2, lr=1e-3, warmup=2, workers=1, log_every=1,
                device="cpu", quiet=True)
    losses = [l["loss"] for l in res.losses]
    assert len(losses) >= 16
    # the loss falls: the last steps are well below the first ones
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 0.2, losses
    assert res.checkpoint.name == "epoch_2.pt" and res.epochs_done == 2
    assert json.loads((res.run_dir / "losses.json").read_text()) == res.losses
    assert (res.run_dir / "train.log").is_file() and (res.run_dir / "checkpoints" / "epoch_latest.pt").is_file()
    from clipcurate.stages import status_rows

    assert next(r for r in status_rows(ws) if r["stage"] == "train")["state"] == "done"

    # a rerun of the finished run is a no-op; one more epoch resumes from the last checkpoint
    again = train(ws, "tiny", batch_size=16, epochs=2, lr=1e-3, warmup=2, workers=1, log_every=1,
                  device="cpu", quiet=True)
    assert again.epochs_done == 2 and len(again.losses) == len(res.losses)
    # changing a setting of an existing run is refused (one line), unless --force
    r = cli("-w", ws.root, "train", "--name", "tiny", "--batch-size", "8", "--device", "cpu")
    assert r.code == 1 and "--force" in r.err and len(r.err.strip().splitlines()) == 1

    # the checkpoint loads back into embed and eval (default: the latest checkpoint of train/)
    make_class_bench(ws, tmp_path, "shapes", per_class=3, n_classes=3)
    write_splits(ws, {"shapes": {0, 4}})
    r = cli("-w", ws.root, "embed", "--model", "clipcurate-tiny", "--pretrained", res.checkpoint,
            "--no-pool", "--workers", "0", "--device", "cpu")
    assert r.code == 0, r.err
    tag = r.out.strip().splitlines()[-1]
    assert tag.startswith("ckpt__")
    r = cli("-w", ws.root, "eval", "--workers", "0", "--device", "cpu", "--format", "json")
    assert r.code == 0, r.err
    row = json.loads(r.out.splitlines()[0])
    assert row["benchmark"] == "shapes" and row["n"] == 9 and row["n_overlap"] == 2
    assert ws.path("eval", tag, "report.md").is_file()
    assert "epoch_2.pt" in ws.path("eval", tag, "report.md").read_text()


def test_missing_curated_set_names_curate(ws, cli):
    r = cli("-w", ws.root, "train", "--device", "cpu")
    assert r.code == 1 and "clipcurate curate" in r.err and len(r.err.strip().splitlines()) == 1


def test_empty_curated_set_is_one_line_exit_1(ws, cli):
    ws.path("curate", "shards").mkdir(parents=True)
    ws.path("curate", "shards", "sizes.json").write_text('{"00000.tar": 0}')
    ws.path("curate", "_SUCCESS").write_text("")
    r = cli("-w", ws.root, "train", "--device", "cpu")
    assert r.code == 1 and "curated set is empty" in r.err and len(r.err.strip().splitlines()) == 1


def test_batch_that_no_worker_can_fill_is_refused_not_a_hang(ws, cli):
    from clipcurate.curate import curate

    make_pool(ws, n=24, shards=1, fail_every=0)
    curate(ws, shard_size=10, decontam=False)  # 3 shards: 10, 10, 4
    r = cli("-w", ws.root, "train", "--batch-size", "12", "--workers", "2", "--device", "cpu")
    assert r.code == 1 and "--batch-size" in r.err and len(r.err.strip().splitlines()) == 1
    r = cli("-w", ws.root, "train", "--model", "no-such-model", "--batch-size", "4", "--device", "cpu")
    assert r.code == 1 and "unknown model 'no-such-model'" in r.err


def test_latest_checkpoint_prefers_the_finished_epoch(tmp_path):
    import torch

    from clipcurate.train import latest_checkpoint

    d = tmp_path / "checkpoints"
    d.mkdir()
    assert latest_checkpoint(d) is None
    for n in (1, 2, 10):
        torch.save({"epoch": n}, d / f"epoch_{n}.pt")
    assert latest_checkpoint(d).name == "epoch_10.pt"  # natural order, not string order
    # epoch_latest.pt (written last, by rename) says epoch 2 finished: epoch_10.pt is a leftover
    torch.save({"epoch": 2}, d / "epoch_latest.pt")
    assert latest_checkpoint(d).name == "epoch_2.pt"


def test_parse_losses(tmp_path):
    from clipcurate.train import parse_losses

    log = tmp_path / "train.log"
    log.write_text(
        "2026-01-01,00:00:00 | INFO | Start epoch 0\n"
        "2026-01-01,00:00:01 | INFO | Train Epoch: 0 [ 16/160 (10%)] Data (t): 0.1 Batch (t): 0.2, 80/s, 80/s/gpu "
        "LR: 0.000100 Logit Scale: 14.286 Contrastive_loss: 2.7726 (2.7726) Loss: 2.7726 (2.7726)\n"
        "2026-01-01,00:00:02 | INFO | Train Epoch: 1 [160/160 (100%)] Data (t): 0.1 Batch (t): 0.2, 80/s, 80/s/gpu "
        "LR: 0.000000 Logit Scale: 14.300 Contrastive_loss: 1.5 (2.1) Loss: 1.5 (2.1)\n")
    assert parse_losses(log) == [{"epoch": 0, "samples": 16, "loss": 2.7726}, {"epoch": 1, "samples": 160, "loss": 1.5}]



@pytest.mark.slow
def test_kill_9_mid_training_then_rerun_resumes_from_the_last_epoch(ws):
    """A real SIGKILL after the first checkpoint: the rerun continues from it, it does not restart."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import torch

    from clipcurate.curate import curate

    make_pool(ws, n=120, shards=2, size=32)
    curate(ws, shard_size=60, decontam=False)
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}

    def cmd(epochs):
        return [sys.executable, "-m", "clipcurate", "-q", "-w", str(ws.root), "train", "--name", "k",
                "--epochs", str(epochs), "--batch-size", "16", "--workers", "0", "--device", "cpu",
                "--log-every", "1"]

    proc = subprocess.Popen(cmd(30), env=env, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = ws.path("train", "k", "checkpoints", "epoch_latest.pt")
    deadline = time.time() + 240
    while not latest.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "no checkpoint before the deadline"
    done = int(torch.load(latest, map_location="cpu", weights_only=True)["epoch"])
    assert 1 <= done < 30

    # the rerun (asking for one epoch more than was finished) resumes from the checkpoint
    r = subprocess.run(cmd(done + 1), env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"epochs: {done + 1}" in r.stdout
    log = ws.path("train", "k", "train.log").read_text()
    assert "=> resuming checkpoint" in log and f"(epoch {done})" in log
    assert ws.path("train", "k", "checkpoints", f"epoch_{done + 1}.pt").is_file()


@pytest.mark.slow
def test_same_seed_same_weights(ws):
    """Two runs with one seed on one machine end with the same weights (data order, threads, init pinned)."""
    import torch

    from clipcurate.curate import curate
    from clipcurate.train import train

    make_pool(ws, n=64, shards=2, size=32)
    curate(ws, shard_size=32, decontam=False)
    ck = [train(ws, name, batch_size=8, epochs=1, lr=1e-3, warmup=2, workers=1, device="cpu", quiet=True,
                threads=1).checkpoint for name in ("a", "b")]
    sa, sb = (torch.load(c, map_location="cpu", weights_only=True)["state_dict"] for c in ck)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert json.loads((ck[0].parent.parent / "run.json").read_text())["determinism"]["torch_threads"] == 1
