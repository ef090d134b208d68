"""Stage ``train``: stock open_clip_train, in process, on the curated shards (``train/{run}/``).

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import train

    res = train.train(ws, "default", epochs=2, device="cpu")   # a TrainResult (run_dir, checkpoint, losses)
    train.latest_checkpoint(ws.path("train", "default", "checkpoints"))   # newest finished epoch_N.pt
    train.run_model(checkpoint)      # the architecture a checkpoint was trained with
    train.parse_losses(log_file)     # the loss lines of train/{run}/train.log
"""

from clipcurate.train.stage import TrainResult, latest_checkpoint, parse_losses, run_dir, run_model, train

__all__ = ["train", "latest_checkpoint", "run_model", "parse_losses", "run_dir", "TrainResult"]
