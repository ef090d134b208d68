"""The copy detector of CLIP's App. C, trained on the pool's own images.

CLIP's embeddings are too semantic to find copies: two different photos of the same kind of object
score almost 1, and a high-frequency texture resized with another interpolation can score low. So
CLIP trained a dedicated detector, and so do we:

- the encoder is ResNet-style, with **weight normalisation instead of batch normalisation** (batch
  statistics would let the two copies of an image find each other through the batch mean, and would
  leak duplicates inside a batch), **anti-aliased downsampling** (blur with a binomial filter, then
  subsample, after Zhang 2019, so a shift or an interpolation change does not alias into the
  descriptor) and **GELU**;
- each image ``x`` meets its App. C copy ``x'`` (``clipcurate.core.augment.app_c_copy``: crop/zoom, aspect
  distortion, down/up-scaling with random interpolations, small rotation, HSV jitter, JPEG);
- the loss is InfoNCE with a **fixed** temperature of 0.07: in a batch of B pairs, the descriptor of
  ``x_i`` must be closer to that of ``x'_i`` than to the B-1 other copies (and the other way round);
- the descriptor is the L2-normalised output of the head, compared by cosine (a dot product).

Training is a loop over steps; step ``s`` draws its batch and its augmentations from a generator
seeded with ``(seed, s)``, so a run killed at any moment and resumed from its last checkpoint replays
exactly the same batches. Checkpoints live in ``workspace/detector/{run}/`` and are written
atomically::

    detector/{run}/checkpoint.pt   model + optimiser + step (resume point, rewritten every N steps)
    detector/{run}/log.json        the loss curve up to the checkpoint
    detector/{run}/detector.pt     the finished model: {"format": "clipcurate-detector", config, state_dict}
    detector/{run}/_SUCCESS        written last

A finished ``detector.pt`` — or an external TorchScript descriptor such as an SSCD ``.pt`` file —
is loaded by :func:`load_descriptor` and turned into vectors like any embedding
(``clipcurate embed --detector PATH``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import re
import shutil
import tarfile
import time
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from clipcurate.core import config as cfgmod
from clipcurate.core.augment import app_c_copy
from clipcurate.core.console import log, progress, warn
from clipcurate.core.errors import ClipcurateError, MissingUpstream
from clipcurate.core.io import atomic_path, clean_temp, read_json, write_json, write_text
from clipcurate.core.stage import SUCCESS, Stage, marker
from clipcurate.core.workspace import Workspace

TEMPERATURE = 0.07  # fixed, as in App. C (not learned); see detector_net.info_nce
FORMAT = "clipcurate-detector"
FORMAT_VERSION = 1

# Model-shape keys: a run cannot be resumed with different values for these.
SHAPE_KEYS = ("width", "blocks", "dim", "image_size")

PRESETS: dict[str, dict] = {
    # Trains on 2 CPU cores in a few minutes on 64 px images.
    "tiny": dict(width=16, blocks=[1, 1, 1], dim=64, image_size=64, batch_size=48, steps=300, lr=3e-3,
                 warmup=20),
    # The GPU recipe (docs/detector.md): a ResNet-34 layout at 224 px, large batches (more negatives).
    "full": dict(width=64, blocks=[3, 4, 6, 3], dim=256, image_size=224, batch_size=512, steps=20000,
                 lr=1e-3, warmup=500),
}

DEFAULTS = dict(preset="tiny", width=0, blocks=[], dim=0, image_size=0, batch_size=0, steps=0, lr=0.0,
                warmup=-1, weight_decay=1e-4, strength=1.0, seed=0, checkpoint_every=50, workers=0,
                device="auto")

cfgmod.section("detector", DEFAULTS, docs={
    "preset": "tiny (CPU, minutes) or full (GPU recipe); the other keys override it when set (non-zero)",
    "width": "channels of the first stage (doubles at every stage)",
    "blocks": "residual blocks per stage, e.g. [3, 4, 6, 3]",
    "dim": "descriptor dimension",
    "image_size": "square input size in pixels",
    "batch_size": "pairs per step (each pair's copy is contrasted with the rest of the batch)",
    "steps": "optimiser steps in total (raise it and rerun to train an existing run further)",
    "lr": "peak AdamW learning rate (cosine decay after warmup)",
    "warmup": "linear warmup steps",
    "weight_decay": "AdamW weight decay",
    "strength": "App. C augmentation strength in (0, 1]",
    "seed": "seeds the initialisation, the batches and the augmentations",
    "checkpoint_every": "steps between checkpoints",
    "workers": "DataLoader worker processes preparing batches (0 = in the main process)",
    "device": "auto, cpu or cuda",
})



def resolve_config(options: dict) -> dict:
    """Fill the keys left at 0/empty from the preset; check the values."""
    preset = options.get("preset") or "tiny"
    if preset not in PRESETS:
        raise ClipcurateError(f"detector preset {preset!r} unknown; use one of {', '.join(PRESETS)}")
    out = dict(DEFAULTS)
    out.update(PRESETS[preset])
    for k, v in options.items():
        if k in ("blocks",):
            if v:
                out[k] = [int(b) for b in v]
        elif k == "warmup":
            if v is not None and v >= 0:
                out[k] = v
        elif v not in (None, 0, 0.0, "", []):
            out[k] = v
    out["preset"] = preset
    out["blocks"] = [int(b) for b in out["blocks"]]
    if not out["blocks"] or min(out["blocks"]) < 1:
        raise ClipcurateError(f"detector blocks {out['blocks']!r} must be a non-empty list of counts ≥ 1")
    if out["batch_size"] < 2:
        raise ClipcurateError(f"detector batch_size {out['batch_size']} must be ≥ 2 (InfoNCE needs negatives)")
    if not 0 < out["strength"] <= 1:
        raise ClipcurateError(f"detector strength {out['strength']} must be in (0, 1]")
    if out["image_size"] < 16:
        raise ClipcurateError(f"detector image_size {out['image_size']} must be ≥ 16")
    return out


def _bounded(img: Image.Image, size: int) -> Image.Image:
    """Shrink a large image so its longer side is at most 2 × size before augmenting: App. C's
    crops and rescales keep their meaning, and the augmentation cost stays bounded."""
    img = img.convert("RGB")
    if max(img.size) > 2 * size:
        img.thumbnail((2 * size, 2 * size), Image.Resampling.BICUBIC)
    return img


# ----------------------------------------------------------------------------------------------
# Training data: the pool's images

class PoolImages:
    """Random access to the images of ``pool/shards/*.tar`` without unpacking: an index of
    (tar file, byte offset, size) per ``.jpg`` member, read by seeking."""

    IMAGE_EXT = (".jpg", ".jpeg", ".png", ".webp")

    def __init__(self, tars: Sequence[Path]):
        self.entries: list[tuple[int, int, int]] = []
        self.tars = [str(t) for t in tars]
        self.skipped_tars = 0
        for ti, path in enumerate(self.tars):
            try:
                with tarfile.open(path, "r") as tf:
                    # by member name, not tar order: the downloader's threads write members in
                    # completion order, and the batches must not depend on it (reproducibility)
                    members = sorted((m.name, m.offset_data, m.size) for m in tf
                                     if m.isfile() and m.name.lower().endswith(self.IMAGE_EXT))
                    self.entries += [(ti, off, size) for _, off, size in members]
            except (tarfile.TarError, OSError) as exc:
                self.skipped_tars += 1
                warn(f"{path}: unreadable tar ({exc.__class__.__name__}), skipped")

    @classmethod
    def from_workspace(cls, ws: Workspace) -> "PoolImages":
        tars = sorted(ws.path("pool", "shards").glob("*.tar"))
        if not tars:
            raise MissingUpstream(f"pool shards ({ws.path('pool', 'shards')}/*.tar)", "clipcurate download")
        pool = cls(tars)
        if len(pool) < 2:
            raise ClipcurateError(f"{ws.path('pool', 'shards')}: {len(pool)} images; the detector needs at "
                                  f"least 2 (InfoNCE contrasts each image with the others)")
        return pool

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, i: int) -> Image.Image:
        ti, off, size = self.entries[i]
        with open(self.tars[ti], "rb") as fh:
            fh.seek(off)
            data = fh.read(size)
        img = Image.open(io.BytesIO(data))
        img.draft("RGB", (512, 512))  # JPEG: decode at a reduced scale when the image is large
        return img.convert("RGB")


class ImageList:
    """The same interface over images in memory (tests, benchmarks)."""

    def __init__(self, images: Sequence[Image.Image]):
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def load(self, i: int) -> Image.Image:
        return self.images[i]


class Batches:
    """Item ``s`` is the whole batch of step ``s``: B images drawn without replacement with a
    generator seeded by (seed, s), each paired with its App. C copy made from the same generator.
    An unreadable image is replaced by the next index and counted (``bad`` in the returned batch)."""

    def __init__(self, source, cfg: dict, start: int, stop: int):
        self.source, self.cfg, self.start, self.stop = source, cfg, start, stop
        from clipcurate.detector.net import make_preprocess  # the network module imports torch (2.6 s)

        self.preprocess = make_preprocess(int(cfg["image_size"]))

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, k: int):
        step = self.start + k
        cfg = self.cfg
        rng = np.random.default_rng([int(cfg["seed"]), step])
        n = len(self.source)
        b = min(int(cfg["batch_size"]), n)
        idx = rng.choice(n, size=b, replace=False)
        xa, xb, bad = [], [], 0
        for i in idx:
            img = None
            for attempt in range(n):
                try:
                    img = _bounded(self.source.load(int((i + attempt) % n)), int(cfg["image_size"]))
                    break
                except Exception:  # a corrupt image: count it, take the next one
                    bad += 1
            if img is None:
                raise ClipcurateError("no readable image in the training pool")
            copy = app_c_copy(img, rng, strength=float(cfg["strength"]))
            xa.append(self.preprocess(img))
            xb.append(self.preprocess(copy))
        import torch  # torch: 2.6 s to import; the stage module stays light for every other command

        return torch.stack(xa), torch.stack(xb), bad


# ----------------------------------------------------------------------------------------------
# Training

@dataclasses.dataclass
class TrainResult:
    run_dir: Path | None
    steps: int
    losses: list[float]
    skipped_images: int
    seconds: float
    model: object  # detector_net.CopyDetector, in eval mode on the CPU


def _lr_at(step: int, cfg: dict) -> float:
    """Linear warmup, then cosine decay to 5 % of the peak."""
    peak, warm, total = float(cfg["lr"]), int(cfg["warmup"]), int(cfg["steps"])
    if step < warm:
        return peak * (step + 1) / warm
    t = (step - warm) / max(1, total - warm)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _device(name: str):
    import torch  # torch: 2.6 s to import (see Batches)

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ClipcurateError("detector device 'cuda' asked for but torch sees no GPU; use --device cpu")
    return torch.device(name)


def _resume(ckpt_path: Path | None, model, opt, cfg: dict, device) -> tuple[int, list[float], int]:
    """Load the checkpoint into ``model`` and ``opt`` when there is one: (step, losses, skipped images)."""
    import torch  # torch: 2.6 s to import (see Batches)

    if ckpt_path is None or not ckpt_path.exists():
        return 0, [], 0
    run_dir = ckpt_path.parent
    state = torch.load(ckpt_path, map_location=device, weights_only=True)  # data only, never code
    old = state["config"]
    changed = [k for k in SHAPE_KEYS if old.get(k) != cfg.get(k)]
    if changed:
        raise ClipcurateError(
            f"{run_dir}: this run was started with " + ", ".join(f"{k}={old.get(k)!r}" for k in changed)
            + "; use another --run name, or --force to start it again")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start, losses, skipped = int(state["step"]), list(state["losses"]), int(state.get("skipped_images", 0))
    if start < int(cfg["steps"]):
        log(f"detector: resuming {run_dir.name} at step {start}/{cfg['steps']}")
    return start, losses, skipped


def fit(source, cfg: dict, run_dir: Path | None = None, on_step: Callable[[int, float], None] | None = None
        ) -> TrainResult:
    """Train (or resume) a detector on ``source`` (``PoolImages`` or ``ImageList``).

    With ``run_dir`` the model, optimiser and loss log are checkpointed atomically every
    ``checkpoint_every`` steps and at the end, and an existing checkpoint is resumed."""
    import torch  # torch: 2.6 s to import (see Batches)

    from clipcurate.detector.net import build_model, info_nce  # imports torch

    cfg = resolve_config(cfg)
    device = _device(cfg["device"])
    torch.manual_seed(int(cfg["seed"]))
    # channels-last memory: the convolutions' fast path on CPU and GPU alike (a fifth less time per
    # step on 2 CPU cores); the weights, and so the checkpoints, are the same tensors
    model = build_model(cfg).to(device, memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=float(cfg["lr"]), weight_decay=float(cfg["weight_decay"]))
    ckpt_path = run_dir / "checkpoint.pt" if run_dir else None
    start, losses, skipped = _resume(ckpt_path, model, opt, cfg, device)
    total = int(cfg["steps"])
    t0 = time.time()
    use_amp = device.type == "cuda"

    def save() -> None:
        if ckpt_path is None:
            return
        state = {"config": cfg, "model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                 "losses": losses, "skipped_images": skipped}
        with atomic_path(ckpt_path) as tmp:
            torch.save(state, tmp)
        write_json(run_dir / "log.json", {"config": cfg, "step": step, "losses": losses,
                                          "skipped_images": skipped})

    step = start
    if start < total:
        data = Batches(source, cfg, start, total)
        workers = int(cfg["workers"])
        loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False, num_workers=workers,
                                             persistent_workers=False, pin_memory=use_amp,
                                             prefetch_factor=4 if workers else None)
        model.train()
        with progress("detector train", total=total) as advance:
            advance(start)
            for xa, xb, bad in loader:
                for g in opt.param_groups:
                    g["lr"] = _lr_at(step, cfg)
                xa, xb = xa.to(device, non_blocking=True), xb.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    # One forward pass over both views: nothing is shared between samples (no batch
                    # norm), so concatenating them changes nothing but speed.
                    z = model(torch.cat([xa, xb]).contiguous(memory_format=torch.channels_last)).float()
                loss = info_nce(z[: len(xa)], z[len(xa):])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                opt.step()
                step += 1
                skipped += int(bad)
                losses.append(float(loss.detach()))
                if on_step:
                    on_step(step, losses[-1])
                if step % int(cfg["checkpoint_every"]) == 0 or step == total:
                    save()
                advance()
        if skipped:
            warn(f"detector: {skipped} unreadable images were replaced by others")
    elif ckpt_path is not None and not (run_dir / "log.json").exists():
        save()
    model.eval()
    return TrainResult(run_dir, step, losses, skipped, time.time() - t0, model.cpu())


def run_dir(ws: Workspace, run: str) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", run or ""):
        raise ClipcurateError(f"detector run name {run!r}: use letters, digits, '.', '_' or '-'")
    return ws.path("detector", run)


class DetectorRun(Stage):
    """One training run as a shard of ``detector/``, whose shards are the runs (``detector/{run}/``).

    The runner writes ``detector/_plan.json``, ``detector/{run}.done`` once the run's folder is
    complete (``detector.pt``, then the folder's own ``_SUCCESS``) and ``detector/_SUCCESS`` last. The
    plan lists the finished runs besides this one; a run left unfinished (killed) is left out: only
    ``clipcurate detector train --name RUN`` resumes it, from its checkpoint.
    """

    name = "detector"
    description = "detector train"

    def __init__(self, ws: Workspace, run: str, cfg: dict):
        super().__init__(ws.path("detector"))
        self.ws, self.run_name, self.cfg = ws, run, cfg
        self.result: TrainResult | None = None

    def shards(self) -> list[str]:
        finished = sorted(d.name for d in self.folder.iterdir() if d.is_dir() and (d / SUCCESS).exists())
        return sorted(set(finished) | {self.run_name})

    def run_shard(self, shard: str) -> dict:
        if shard != self.run_name:
            raise ClipcurateError(f"detector run {shard!r} is not finished: resume it with "
                                  f"`clipcurate detector train --name {shard}`")
        folder = run_dir(self.ws, shard)
        source = PoolImages.from_workspace(self.ws)
        log(f"detector: {len(source)} pool images, preset {self.cfg['preset']}, {self.cfg['steps']} steps of "
            f"{self.cfg['batch_size']} pairs at {self.cfg['image_size']} px")
        self.result = fit(source, self.cfg, run_dir=folder)
        save_model(self.result.model, self.cfg, folder / "detector.pt", steps=self.result.steps,
                   losses=self.result.losses)
        write_text(folder / SUCCESS, "")  # the run folder is complete (runs() and reruns read it)
        return {"steps": self.result.steps}


def train(ws: Workspace, options: dict, run: str = "default", force: bool = False) -> TrainResult:
    """``clipcurate detector train``: train on ``pool/shards/*.tar``, checkpoint in
    ``detector/{run}/``, finish with ``detector.pt`` and ``_SUCCESS``. Rerunning a finished run is a
    no-op; raising ``steps`` continues it; ``force`` starts over."""
    cfg = resolve_config(options)
    folder = run_dir(ws, run)
    if force and folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean_temp(folder)
    final = folder / "detector.pt"
    if final.exists() and (folder / SUCCESS).exists():
        import torch  # torch: 2.6 s to import (see Batches)

        from clipcurate.detector.net import build_model  # imports torch

        done = torch.load(final, map_location="cpu", weights_only=True)
        if int(done.get("steps", 0)) >= int(cfg["steps"]) and all(done["config"].get(k) == cfg.get(k)
                                                                    for k in SHAPE_KEYS):
            log(f"detector: run {run!r} already finished ({done['steps']} steps); --force to retrain")
            model = build_model(done["config"])
            model.load_state_dict(done["state_dict"])
            return TrainResult(folder, int(done["steps"]), list(done.get("losses", [])), 0, 0.0, model.eval())
    # a run to (re)do: forget that it finished, then the runner trains it and marks it done
    (folder / SUCCESS).unlink(missing_ok=True)
    stage = DetectorRun(ws, run, cfg)
    marker(stage.folder, run).unlink(missing_ok=True)
    stage.run()
    return stage.result


def save_model(model, cfg: dict, path: Path, steps: int = 0, losses: Sequence[float] = ()) -> Path:
    """The finished model, loadable with ``weights_only=True`` (plain tensors and Python values)."""
    import torch  # torch: 2.6 s to import (see Batches)

    state = {"format": FORMAT, "version": FORMAT_VERSION, "config": dict(cfg), "steps": int(steps),
             "losses": [float(x) for x in losses], "state_dict": {k: v.detach().cpu() for k, v in
                                                                  model.state_dict().items()}}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


# ----------------------------------------------------------------------------------------------
# Descriptors

@dataclasses.dataclass
class Descriptor:
    """A copy descriptor ready to embed images: ``encode(images)`` → float32 [N, dim], L2-normalised."""

    model: object  # a torch module (ours or TorchScript) mapping [N, 3, H, W] to [N, dim]
    preprocess: Callable  # PIL image → float tensor [3, H, W]
    tag: str
    dim: int
    info: dict
    kind: str = "detector"

    def encode_tensors(self, x):
        import torch  # torch: 2.6 s to import (see Batches)
        import torch.nn.functional as F

        with torch.no_grad():
            z = self.model(x)
        if isinstance(z, (tuple, list)):
            z = z[0]
        return F.normalize(z.float().flatten(1), dim=-1)

    def encode(self, images: Sequence[Image.Image], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
        import torch  # torch: 2.6 s to import (see Batches)

        self.model.to(device).eval()
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([self.preprocess(im) for im in images[i: i + batch_size]]).to(device)
            out.append(self.encode_tensors(x).cpu().numpy())
        if not out:
            return np.zeros((0, self.dim), np.float32)
        return np.concatenate(out).astype(np.float32)


def _sha12(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive holds compiled code (``<name>/code/...``); a torch.save file does not."""
    try:
        with zipfile.ZipFile(path) as z:
            return any("/code/" in n for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def load_descriptor(path: str | Path, image_size: int = 0, imagenet_norm: bool = True) -> Descriptor:
    """Load our ``detector.pt`` (or a run folder holding one) or an external TorchScript descriptor.

    External files (e.g. SSCD's ``sscd_disc_mixup.torchscript.pt``) get ImageNet normalisation and
    a square input of ``image_size`` pixels (default 288, SSCD's evaluation size)."""
    p = Path(path).expanduser()
    if p.is_dir():
        p = p / "detector.pt"
    if not p.is_file():
        raise ClipcurateError(f"detector file {str(p)!r} not found: train one with `clipcurate detector "
                              f"train` (it writes detector/<run>/detector.pt) or pass a TorchScript file")
    import torch  # torch: 2.6 s to import (see Batches)

    # the network module imports torch
    from clipcurate.detector.net import IMAGENET_MEAN, IMAGENET_STD, MEAN, STD, build_model, make_preprocess

    sha = _sha12(p)
    if _is_torchscript(p):
        try:
            with warnings.catch_warnings():  # torch ≥ 2.10 flags TorchScript as deprecated; SSCD ships it
                warnings.simplefilter("ignore", FutureWarning)
                model = torch.jit.load(str(p), map_location="cpu").eval()
        except Exception as exc:
            raise ClipcurateError(f"{p}: not a loadable TorchScript file ({exc.__class__.__name__})") from None
        size = int(image_size or 288)
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet_norm else (MEAN, STD)
        pre = make_preprocess(size, mean, std)
        with torch.no_grad():
            try:
                dim = int(Descriptor(model, pre, "", 0, {}).encode_tensors(torch.zeros(1, 3, size, size)).shape[1])
            except Exception as exc:
                raise ClipcurateError(f"{p}: TorchScript model failed on a 1×3×{size}×{size} input "
                                      f"({exc.__class__.__name__}); pass --detector-size") from None
        info = {"name": "torchscript", "file": str(p), "sha256_12": sha, "dim": dim, "image_size": size,
                "normalisation": "imagenet" if imagenet_norm else "0.5"}
        return Descriptor(model, pre, f"detector__ts-{sha}", dim, info)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ClipcurateError(f"{p}: neither a clipcurate detector nor a TorchScript file "
                              f"({exc.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ClipcurateError(f"{p}: not a clipcurate detector (no format={FORMAT!r}); for an external "
                              f"model export it to TorchScript")
    if int(state.get("version", 0)) > FORMAT_VERSION:
        raise ClipcurateError(f"{p}: detector format version {state['version']} is newer than this "
                              f"clipcurate reads ({FORMAT_VERSION}); upgrade clipcurate")
    cfg = state["config"]
    model = build_model(cfg)
    model.load_state_dict(state["state_dict"])
    model.eval()
    size = int(image_size or cfg["image_size"])
    info = {"name": "clipcurate-detector", "file": str(p), "sha256_12": sha, "dim": int(cfg["dim"]),
            "image_size": size, "steps": int(state.get("steps", 0)), "config": cfg}
    run = re.sub(r"[^A-Za-z0-9._-]", "_", p.parent.name or "model")
    return Descriptor(model, make_preprocess(size), f"detector__{run}-{sha}", int(cfg["dim"]), info)


def runs(ws: Workspace) -> list[dict]:
    """One row per run folder: name, state, steps done / asked, last loss."""
    rows = []
    root = ws.path("detector")
    for d in sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []:
        info = read_json(d / "log.json") if (d / "log.json").exists() else {}
        losses = info.get("losses", [])
        rows.append({"run": d.name, "state": "done" if (d / SUCCESS).exists() else "partial",
                     "steps": info.get("step", 0), "steps_total": info.get("config", {}).get("steps"),
                     "first_loss": round(losses[0], 4) if losses else None,
                     "last_loss": round(float(np.mean(losses[-10:])), 4) if losses else None,
                     "path": str(d / "detector.pt") if (d / "detector.pt").exists() else ""})
    return rows
