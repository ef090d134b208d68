"""Encoders: what turns pixels (and text) into vectors.

An encoder is any object with ``tag`` (the folder name under ``embed/``), ``dim``, ``kind``
(``clip`` or ``detector``), ``info`` (what ``model.json`` records), ``preprocess`` (PIL image →
float tensor) and ``encode_tensors(x)``; one that also has ``tokenizer`` and ``encode_tokens``
embeds text (captions, class prompts) too. Two kinds exist:

- :class:`ClipEncoder`: an open_clip model (:func:`clip_encoder`; :func:`model_spec` turns the
  ``--model`` / ``--pretrained`` arguments into its :class:`~clipcurate.core.models.ModelSpec`);
- the copy detector's descriptor (``clipcurate embed --detector PATH``), reached through
  :data:`ENCODER_LOADERS` so that this package does not depend on the detector's.
"""

from __future__ import annotations

import importlib

from clipcurate.core import models
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.models import LoadedModel, ModelSpec


class ClipEncoder:
    """An open_clip model as an encoder of images and tokenised text."""

    kind = "clip"

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.tag, self.dim = lm.tag, lm.dim
        self.preprocess, self.tokenizer = lm.preprocess, lm.tokenizer
        self.info = lm.info()
        self.device = lm.device

    def to(self, device: str) -> "ClipEncoder":
        return self  # models.load already placed it

    def encode_tensors(self, x):
        return self.lm.encode_image(x)

    def encode_tokens(self, tokens):
        return self.lm.encode_text(tokens)


def model_spec(model: str, pretrained: str | None) -> ModelSpec:
    """The model of ``--model`` / ``--pretrained``: ``pretrained`` None, "" or "random" is a seeded
    random initialisation (written ``random`` in model.json and the tag either way)."""
    return ModelSpec(model, None if pretrained in (None, "", models.RANDOM) else pretrained)


def clip_encoder(spec: ModelSpec, device: str = "auto", precision: str = "auto") -> ClipEncoder:
    """Load an open_clip model on ``device`` (auto: CUDA when present); precision auto = bf16 on CUDA."""
    dev = models.resolve_device(device)
    if precision in (None, "", "auto"):
        precision = "bf16" if dev.startswith("cuda") else "fp32"
    return ClipEncoder(models.load(spec, device=dev, precision=precision))


def device_of(enc, device: str) -> str:
    """Where an encoder runs: its own ``device`` when it has one, else ``device`` resolved."""
    return getattr(enc, "device", None) or models.resolve_device(device)


# Other encoders reachable from the CLI: kind -> "module:function(path) -> encoder".
ENCODER_LOADERS = {"detector": "clipcurate.detector:load_descriptor"}


def load_encoder(kind: str, path: str):
    """e.g. ``load_encoder("detector", "workspace/detector/run1")`` (the hook `embed --detector` uses)."""
    if kind not in ENCODER_LOADERS:
        raise ClipcurateError(f"unknown encoder kind {kind!r}; known: {', '.join(ENCODER_LOADERS)}")
    mod, _, fn = ENCODER_LOADERS[kind].partition(":")
    try:
        loader = getattr(importlib.import_module(mod), fn)
    except (ImportError, AttributeError):
        raise ClipcurateError(f"--{kind} needs {mod}.{fn}, which this installation lacks") from None
    return loader(path)


def split_preprocess(preprocess):
    """Split an eval transform ending in ToTensor + Normalize into (PIL part, mean, std).

    The PIL part runs in the workers; ToTensor + Normalize run batched on the device. None when
    the transform has another shape (then workers run all of it and send float tensors)."""
    from torchvision import transforms as T  # torch + torchvision: 2.6 s+ to import; only embedding needs them

    ts = getattr(preprocess, "transforms", None)
    if not ts or len(ts) < 2 or not isinstance(ts[-1], T.Normalize) or not isinstance(ts[-2], T.ToTensor):
        return None
    return T.Compose(list(ts[:-2])), tuple(float(v) for v in ts[-1].mean), tuple(float(v) for v in ts[-1].std)
