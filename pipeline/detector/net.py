"""The App. C copy-detector network, its loss and its preprocessing (torch; imported on first use
by :mod:`clipcurate.detector.stage`, so that loading the stage list does not import torch)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torch.nn.utils.parametrizations import weight_norm
from torchvision import transforms as T

TEMPERATURE = 0.07  # fixed, as in App. C (not learned)


class BlurPool(nn.Module):
    """Anti-aliased downsampling: low-pass with a fixed [1, 2, 1] ⊗ [1, 2, 1] / 16 filter, then keep
    every second pixel. Subsampling without the blur aliases high frequencies (stripes, JPEG
    blocks) into the features, so a copy re-interpolated differently would look different."""

    def __init__(self, channels: int, stride: int = 2):
        super().__init__()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = k[:, None] * k[None, :]
        self.register_buffer("kernel", (k / k.sum()).expand(channels, 1, 3, 3).clone())
        self.channels, self.stride = channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.kernel, stride=self.stride, groups=self.channels)


def wn_conv(cin: int, cout: int, k: int) -> nn.Module:
    """A stride-1 convolution whose weight is reparametrised as g · v / ‖v‖ (weight normalisation):
    it normalises per output channel using the weights only, never the batch."""
    return weight_norm(nn.Conv2d(cin, cout, k, padding=k // 2, bias=True))


class Block(nn.Module):
    """Pre-activation residual block: [blur-pool] → GELU → conv3×3 → GELU → conv3×3, added to the
    (1×1-projected) input. Without batch norm a deep stack of residuals can blow up at init, so each
    residual branch is scaled by a learned gain that starts at 0 (SkipInit, De & Smith 2020)."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.pool = BlurPool(cin) if down else nn.Identity()
        self.conv1 = wn_conv(cin, cout, 3)
        self.conv2 = wn_conv(cout, cout, 3)
        self.skip = wn_conv(cin, cout, 1) if cin != cout else nn.Identity()
        self.gain = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(x)
        h = self.conv2(F.gelu(self.conv1(F.gelu(x))))
        return self.skip(x) + self.gain * h


class CopyDetector(nn.Module):
    """stem (conv3×3 → GELU → blur-pool) → stages of residual blocks (the first block of every stage
    after the first halves the resolution with a blur-pool and doubles the width) → GELU → global
    average pool → weight-normalised linear → L2 normalisation."""

    def __init__(self, width: int = 16, blocks: Sequence[int] = (1, 1, 1), dim: int = 64, **_):
        super().__init__()
        self.stem = wn_conv(3, width, 3)
        self.stem_pool = BlurPool(width)
        layers, cin = [], width
        for i, n in enumerate(blocks):
            cout = width * 2 ** i
            for j in range(n):
                layers.append(Block(cin, cout, down=(i > 0 and j == 0)))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.head = weight_norm(nn.Linear(cin, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_pool(F.gelu(self.stem(x)))
        x = F.gelu(self.blocks(x))
        x = x.mean(dim=(2, 3))
        return F.normalize(self.head(x), dim=-1)


def build_model(cfg: dict) -> CopyDetector:
    return CopyDetector(width=int(cfg["width"]), blocks=cfg["blocks"], dim=int(cfg["dim"]))


def info_nce(za: torch.Tensor, zb: torch.Tensor, temperature: float = TEMPERATURE) -> torch.Tensor:
    """Symmetric InfoNCE: row i of ``za`` must pick row i of ``zb`` among all rows, and vice versa.
    Inputs are L2-normalised, so ``za @ zb.T`` holds cosine similarities; dividing by the fixed
    temperature 0.07 sharpens them before the softmax."""
    logits = za @ zb.t() / temperature
    target = torch.arange(za.shape[0], device=za.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


# ----------------------------------------------------------------------------------------------
# Preprocessing

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class _RGB:
    """PIL image → RGB (a picklable transform, so DataLoader workers can run it)."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("RGB")


def make_preprocess(size: int, mean=MEAN, std=STD) -> Callable[[Image.Image], torch.Tensor]:
    """RGB → squash to size × size with antialiased bicubic resampling (no crop: a copy may be a
    crop already; cropping again would lose what the two images share) → ToTensor → Normalize.
    A torchvision Compose ending in ToTensor + Normalize: picklable, and ``clipcurate.embed`` runs
    its PIL half in the decoding workers and the normalisation batched on the device."""
    return T.Compose([_RGB(), T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC, antialias=True),
                      T.ToTensor(), T.Normalize(mean, std)])
