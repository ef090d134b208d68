"""Stage ``detector``: the copy detector of CLIP's App. C, trained on the pool's own images.

The public API (what the CLI, ``clipcurate run`` and other stages call)::

    from clipcurate import detector

    res = detector.train(ws, {"preset": "tiny"}, run="default")   # `detector train` (resumable)
    detector.runs(ws)                                              # `detector list`
    desc = detector.load_descriptor("workspace/detector/default")  # ours, or a TorchScript file (SSCD)
    vectors = desc.encode(images)                                  # float32 [N, dim], L2-normalised

A :class:`Descriptor` is an image encoder like a CLIP model (``tag``, ``dim``, ``kind``, ``info``,
``preprocess``, ``encode_tensors``), so ``clipcurate embed --detector PATH`` writes its vectors in
the embed layout, and ``overlap`` reads them as its ``score_detector`` signal. The perceptual
hashes of ``detector hashes`` live with the other signals, in ``clipcurate.overlap``.

Nothing here imports torch until a model is built or loaded (:mod:`clipcurate.detector.net`).
"""

from clipcurate.detector.stage import PRESETS, Descriptor, ImageList, PoolImages, TrainResult, fit, load_descriptor, \
    resolve_config, run_dir, runs, save_model, train

__all__ = [
    "Descriptor", "ImageList", "PRESETS", "PoolImages", "TrainResult", "fit", "load_descriptor", "resolve_config",
    "run_dir", "runs", "save_model", "train",
]
