"""Model loading through open_clip, and the model tag that names a model's outputs.

A model is a :class:`ModelSpec` — an open_clip architecture name and where its weights come from:

- ``pretrained=None`` or ``"random"``: random initialisation, *seeded* (torch seed 0 on the CPU), so
  two runs — or the pool today and a benchmark tomorrow — get the very same weights and their
  embeddings stay comparable;
- a hub tag of the architecture (``ViT-B-32`` / ``laion2b_s34b_b79k``): open_clip downloads it (a
  machine without internet gets one clear line saying so);
- ``model="hf-hub:org/name"``: config and weights from the Hugging Face hub (pretrained is ignored);
- a local checkpoint file: open_clip_train's ``epoch_N.pt`` (a dict with ``"state_dict"``, keys
  maybe prefixed ``module.``) or a bare state dict, always read with ``torch.load(weights_only=True)``
  so that a checkpoint cannot run code.

The *model tag* names the folder ``embed/{tag}`` and is the model name and its weights made
filesystem-safe (docs/design.md): ``ViT-B-32__laion2b_s34b_b79k``, ``clipcurate-tiny__random``,
``hf__org--name``, and ``ckpt__<first 12 hex of the checkpoint's sha256>`` (the content, not the
path, names a checkpoint: moving the file keeps the tag, retraining changes it).

The tiny architecture ``clipcurate-tiny`` (pipeline/core/model_configs/) is registered with open_clip by
:func:`register_configs`; it trains in minutes on two CPU cores and embeds fast, for tests and the demo.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import re
import socket
import threading
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any, Callable

from clipcurate.core.errors import ClipcurateError

CONFIG_DIR = Path(__file__).parent / "model_configs"
RANDOM = "random"
TINY = "clipcurate-tiny"
SEED = 0
PRECISIONS = ("fp32", "bf16", "fp16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """An open_clip architecture (or ``hf-hub:`` id) and its weights (tag, file, or None = random)."""

    model: str
    pretrained: str | None = None

    @property
    def is_random(self) -> bool:
        return self.pretrained in (None, "", RANDOM) and not self.is_hf_hub

    @property
    def is_hf_hub(self) -> bool:
        return self.model.startswith("hf-hub:")

    @property
    def is_checkpoint(self) -> bool:
        return not self.is_hf_hub and not self.is_random and _looks_like_path(self.pretrained)


def _looks_like_path(p: str | None) -> bool:
    return bool(p) and (os.sep in p or p.endswith((".pt", ".pth", ".bin", ".safetensors")) or os.path.exists(p))


def register_configs() -> None:
    """Add pipeline/model_configs to open_clip's architectures (idempotent)."""
    import open_clip  # open_clip: 6.4 s to import, only where a model is built
    from open_clip import factory  # open_clip: 6.4 s to import, only where a model is built

    if CONFIG_DIR not in factory._MODEL_CONFIG_PATHS:
        open_clip.add_model_config(CONFIG_DIR)


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(s: str) -> str:
    return _SAFE.sub("-", s).strip("-") or "x"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while True:
            b = fh.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def model_tag(spec: ModelSpec) -> str:
    """The folder name of a model's outputs (see the module docstring)."""
    if spec.is_hf_hub:
        return "hf__" + _safe(spec.model[len("hf-hub:"):].replace("/", "--"))
    if spec.is_random:
        return f"{_safe(spec.model)}__{RANDOM}"
    if spec.is_checkpoint:
        if not os.path.isfile(spec.pretrained):
            raise ClipcurateError(f"checkpoint {spec.pretrained!r} not found: pass an existing file to --pretrained")
        return "ckpt__" + file_sha256(spec.pretrained)[:12]
    return f"{_safe(spec.model)}__{_safe(spec.pretrained)}"


@dataclasses.dataclass
class LoadedModel:
    """An open_clip model ready for inference, with what is needed to feed it."""

    spec: ModelSpec
    tag: str
    model: Any  # torch.nn.Module in eval mode, on ``device``
    preprocess: Callable  # PIL image -> float tensor [3, H, W] (the eval transform)
    tokenizer: Callable  # list[str] -> LongTensor [n, context_length]
    dim: int
    device: str
    precision: str
    image_size: tuple[int, int]

    def autocast(self):
        """Mixed precision for bf16/fp16 (the weights stay fp32); fp32 runs as is."""
        import torch  # torch: 2.6 s to import, only where a model runs

        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.split(":")[0], dtype=dtype)

    def encode_image(self, pixels):
        """float pixels [n, 3, H, W] (already normalised) -> L2-normalised float32 [n, dim]."""
        import torch  # torch: 2.6 s to import, only where a model runs

        with torch.inference_mode(), self.autocast():
            return self.model.encode_image(pixels, normalize=True).float()

    def encode_text(self, tokens):
        import torch  # torch: 2.6 s to import, only where a model runs

        with torch.inference_mode(), self.autocast():
            return self.model.encode_text(tokens, normalize=True).float()

    def info(self) -> dict:
        """What embed/{tag}/model.json records."""
        return {"model": self.spec.model, "pretrained": self.spec.pretrained or RANDOM, "tag": self.tag,
                "dim": self.dim, "kind": "clip", "image_size": list(self.image_size)}


def resolve_device(device: str = "auto") -> str:
    import torch  # torch: 2.6 s to import, only where a model runs

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ClipcurateError(f"device {device!r} asked for but no CUDA GPU is visible: use --device cpu or auto")
    if device != "cpu" and not device.startswith("cuda"):
        raise ClipcurateError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return device


def load(spec: ModelSpec, device: str = "cpu", precision: str = "fp32") -> LoadedModel:
    """Build the model, load its weights, move it to ``device``; errors are one clear line."""
    import open_clip  # open_clip: 6.4 s to import, only where a model is built
    import torch  # torch: 2.6 s to import, only where a model runs

    register_configs()
    device = resolve_device(device)
    if precision not in PRECISIONS:
        raise ClipcurateError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    tag = model_tag(spec)
    name = spec.model
    if not spec.is_hf_hub and name not in open_clip.list_models():
        raise ClipcurateError(
            f"unknown model {name!r}: use an open_clip architecture (e.g. ViT-B-32, {TINY}) or hf-hub:org/name")

    # 1. The architecture, randomly initialised with a fixed seed (the weights of a "random" model
    #    must be the same in every process), then the weights from the tag, hub or checkpoint.
    with torch.random.fork_rng(devices=[]), _quiet_open_clip(), _offline_if_unreachable(spec):
        torch.manual_seed(SEED)
        try:
            if spec.is_checkpoint:
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
                _load_checkpoint(model, spec.pretrained, name)
            elif spec.is_random:
                model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None)
            else:
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=None if spec.is_hf_hub else spec.pretrained)
        except ClipcurateError:
            raise
        except Exception as exc:
            raise _load_error(spec, exc) from None
    try:
        with _quiet_open_clip(), _offline_if_unreachable(spec):
            tokenizer = open_clip.get_tokenizer(name)
    except Exception as exc:  # hf-hub tokenizers download too
        raise _load_error(spec, exc) from None

    # 2. Inference mode on the device; on CUDA channels-last helps the convolution of the patch stem.
    model.eval().requires_grad_(False).to(device)
    if device.startswith("cuda"):
        model.to(memory_format=torch.channels_last)
    size = getattr(model.visual, "image_size", 224)
    size = tuple(size) if isinstance(size, (tuple, list)) else (int(size), int(size))
    dim = _embed_dim(model, name, size)
    return LoadedModel(spec=spec, tag=tag, model=model, preprocess=preprocess, tokenizer=tokenizer, dim=dim,
                       device=device, precision=precision, image_size=size)


@contextmanager
def _quiet_open_clip():
    """open_clip logs to the root logger (a warning for every random init, errors before it raises);
    our own error line says it better, so silence it while loading."""

    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


@contextmanager
def _offline_if_unreachable(spec: ModelSpec, host: str = "huggingface.co", timeout: float = 3.0):
    """Without internet, huggingface_hub retries for ~45 s before failing. Probe DNS once (3 s at
    most); when the hub is unreachable switch huggingface_hub to offline mode for this load, so
    that a file already in its cache still loads and a missing one fails at once."""
    if spec.is_random or spec.is_checkpoint:
        yield
        return

    ok: list[bool] = []

    def probe():
        try:
            socket.getaddrinfo(host, 443)
            ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    reachable = bool(ok and ok[0])
    try:
        from huggingface_hub import constants  # huggingface_hub: imported by open_clip, only when a hub model is fetched
    except ImportError:  # pragma: no cover
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    if not reachable:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _embed_dim(model, name: str, size) -> int:
    import open_clip  # open_clip: 6.4 s to import, only where a model is built
    import torch  # torch: 2.6 s to import, only where a model runs

    cfg = open_clip.get_model_config(name) if not name.startswith("hf-hub:") else None
    if cfg and "embed_dim" in cfg:
        return int(cfg["embed_dim"])
    with torch.inference_mode():  # fall back to one forward pass
        dev = next(model.parameters()).device
        return int(model.encode_image(torch.zeros(1, 3, *size, device=dev)).shape[-1])


def _load_checkpoint(model, path: str, name: str) -> None:
    """open_clip_train's epoch_N.pt (``state_dict``, ``module.`` prefix) or a bare state dict."""

    from open_clip.factory import load_checkpoint  # open_clip: 6.4 s to import, only where a model is built

    if not os.path.isfile(path):
        raise ClipcurateError(f"checkpoint {path!r} not found: pass an existing file to --pretrained")
    try:
        load_checkpoint(model, path, strict=True, weights_only=True)
    except pickle.UnpicklingError as exc:
        with open(path, "rb") as fh:
            head = fh.read(2)
        if head not in (b"PK", b"\x80\x02"):
            raise ClipcurateError(f"checkpoint {path!r} is not a torch checkpoint file (.pt with a state_dict)") from None
        raise ClipcurateError(
            f"checkpoint {path!r} holds more than plain weights and is refused (torch.load weights_only=True): "
            f"{str(exc).splitlines()[0][:160]}") from None
    except (OSError, EOFError) as exc:
        raise ClipcurateError(f"checkpoint {path!r} could not be read ({exc.__class__.__name__}: {str(exc)[:160]})") from None
    except Exception as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [exc.__class__.__name__]
        if "PytorchStreamReader" in lines[0] or "zip archive" in lines[0]:
            raise ClipcurateError(f"checkpoint {path!r} is not a readable torch file ({lines[0][:160]})") from None
        raise ClipcurateError(
            f"checkpoint {path!r} does not fit architecture {name!r} ({lines[min(1, len(lines) - 1)][:160]}): "
            f"pass the --model the checkpoint was trained with") from None


def _load_error(spec: ModelSpec, exc: Exception) -> ClipcurateError:
    """Turn open_clip's download and lookup failures into one actionable line."""
    import open_clip  # open_clip: 6.4 s to import, only where a model is built

    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    if spec.is_hf_hub:
        return ClipcurateError(
            f"could not download {spec.model!r} from the Hugging Face hub ({msg[:160]}); no internet? "
            f"Download the checkpoint where there is, then pass --model ARCH --pretrained FILE")
    if "not a known tag" in msg:
        tags = open_clip.list_pretrained_tags_by_model(spec.model)
        return ClipcurateError(
            f"pretrained {spec.pretrained!r} is neither a tag of {spec.model!r} nor an existing file; "
            f"tags: {', '.join(tags) or 'none'} (or 'random')")
    if "download" in msg.lower() or isinstance(exc, (OSError, ConnectionError)):
        return ClipcurateError(
            f"could not download {spec.model} weights {spec.pretrained!r} ({msg[:160]}); no internet? "
            f"Copy the checkpoint to this machine and pass --pretrained /path/to/file")
    return ClipcurateError(f"could not load model {spec.model!r} / {spec.pretrained!r}: {msg[:200]}")


# -- reproducibility ------------------------------------------------------------------------------

MAX_THREADS = 8


def pinned_threads(threads: int = 0) -> int:
    """The intra-op thread count a run is pinned to: ``threads``, or (0) this machine's CPU count
    (its affinity mask), at most MAX_THREADS — a property of the machine, never of its load."""
    if threads and threads > 0:
        return int(threads)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_THREADS, cores))


def determinism_settings(threads: int) -> dict:
    """What :func:`deterministic` pins, as recorded in run.json and the eval report's provenance."""
    import torch  # torch: 2.6 s to import, only where a model runs

    return {"torch_threads": threads, "omp_num_threads": threads, "deterministic_algorithms": True,
            "cudnn_benchmark": False, "cublas_workspace_config": ":4096:8", "torch": torch.__version__}


@contextmanager
def deterministic(threads: int):
    """Run the body with the settings a result depends on pinned, then restore them:

    - torch's intra-op threads (float reductions split across threads sum in another order, so a
      thread count that followed the load would change the last bits of every gradient) and
      ``OMP_NUM_THREADS`` for worker processes started inside;
    - ``torch.use_deterministic_algorithms(True)`` (warn-only: an op without a deterministic kernel
      says so in the log instead of failing), cuDNN without autotuning, and the cuBLAS workspace
      setting CUDA needs for deterministic matmuls.

    Seeds are the caller's: open_clip_train seeds python, numpy and torch from ``--seed`` and its
    webdataset shuffle from the seed and the epoch; model init uses :data:`SEED`."""
    import torch  # torch: 2.6 s to import, only where a model runs

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    env = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "CUBLAS_WORKSPACE_CONFIG")}
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=before[2])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[3], before[4]
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
