"""Step 3 of a download, inside the img2dataset child process: what runs there and what we hook.

fetch.py starts ``python -c "from clipcurate.download.img2dataset_child import runner_main; ..."``
in its own process group; :func:`runner_main` makes it die with its parent, keeps imports nothing
uses out of it, swaps img2dataset's writer, logger and distributor for ours, and calls
``img2dataset.main.download()``.

img2dataset fetches with img2dataset.downloader.download_image (plain urllib: no address checks,
redirects followed anywhere, no deadline, no body cap). Its Downloader is pickled to the worker
processes with its sample writer class, so we hand download() a writer class of ours: unpickling
imports this module in each worker, and the writer's constructor — which runs at the start of
every shard, before any fetch — replaces download_image there with _hooked_download_image. The
limits travel in {work}/fetch.json next to img2dataset's output folder, so any distributor with
a shared filesystem gets them.

img2dataset is imported only inside functions here: this module is also imported by the parent
(`clipcurate download`, which never needs img2dataset: 4.5 s to import), and in the child the
stand-ins of :func:`runner_main` must be in sys.modules before img2dataset's first import.
"""

from __future__ import annotations

import ctypes
import importlib
import io
import json
import os
import signal
import sys
import types
import warnings
from multiprocessing import get_context
from pathlib import Path

import pyarrow as pa
from PIL import Image

from clipcurate.download import urlsafety
from clipcurate.download.pool import TarStream, sample_members

_HOOK: dict = {}


def _set_pdeathsig() -> None:
    """Linux: die with the parent, so a kill -9 of `clipcurate download` leaves no orphans."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:  # pragma: no cover - best effort
        pass


def _install_hook(output_folder: str) -> None:
    work = Path(output_folder).parent
    settings = json.loads((work / "fetch.json").read_text("utf-8"))
    if _HOOK.get("work") != str(work):
        _HOOK.clear()
        _HOOK.update(settings, work=str(work), policy=urlsafety.Policy.from_json(settings["policy"]))
        if settings.get("pdeathsig"):
            _set_pdeathsig()
    import img2dataset.downloader as i2d_downloader  # img2dataset: see the module docstring
    import img2dataset.resizer as i2d_resizer

    i2d_downloader.download_image = _hooked_download_image
    if not isinstance(i2d_resizer.A, _CachedTransforms):
        i2d_resizer.A = _CachedTransforms(i2d_resizer.A)
    if not getattr(i2d_resizer.Resizer.__call__, "_clipcurate", False):
        i2d_resizer.Resizer.__call__ = _resizer_call(i2d_resizer.Resizer.__call__, i2d_resizer)


def _resizer_call(original, i2d_resizer):
    """img2dataset's Resizer.__call__, without the decode when the image is kept byte for byte.

    With ``resize_mode no`` and ``skip_reencode``, img2dataset stores a JPEG's own bytes (when
    ``imghdr`` calls it a JPEG and it has no alpha channel); it still decodes the whole image, only
    to learn its size for the min-size / area / aspect checks — at 256 px half the CPU of a stored
    image, for a 2 MP photo ~10 ms. The size is in the JPEG header: read it there (Pillow parses
    the markers, no pixel is decoded) and apply the same checks in the same order. Anything else —
    another mode, a format that is re-encoded, a CMYK JPEG (img2dataset would matte its fourth
    channel as alpha), a header Pillow cannot parse — goes to img2dataset's own code.
    """
    # imghdr: what img2dataset's own check uses (the same verdict), imported where img2dataset has
    # already imported it: it is deprecated (a DeprecationWarning on import) and gone in Python 3.13.
    import imghdr

    def call(self, img_stream, blurring_bbox_list=None):
        if (self.skip_reencode and not self.disable_all_reencoding and blurring_bbox_list is None
                and self.resize_mode == i2d_resizer.ResizeMode.no and self.what_ext == "jpeg"):
            try:
                img_stream.seek(0)
                if imghdr.what(img_stream) == "jpeg":
                    img_stream.seek(0)
                    with Image.open(img_stream) as im:
                        ok = im.format == "JPEG" and im.mode in ("RGB", "L")
                        width, height = im.size
                    if ok and width > 0 and height > 0:
                        if min(height, width) < self.min_image_size:
                            return None, None, None, None, None, "image too small"
                        if height * width > self.max_image_area:
                            return None, None, None, None, None, "image area too large"
                        if max(height, width) / min(height, width) > self.max_aspect_ratio:
                            return None, None, None, None, None, "aspect ratio too large"
                        img_stream.seek(0)
                        return img_stream.read(), width, height, width, height, None
            except Exception:  # noqa: BLE001 - not parseable here: img2dataset decides
                img_stream.seek(0)
                return original(self, img_stream, blurring_bbox_list)
            img_stream.seek(0)
        return original(self, img_stream, blurring_bbox_list)

    call._clipcurate = True
    call.__wrapped__ = original
    return call


class _CachedTransforms:
    """Stands in for the `albumentations` module inside img2dataset's Resizer.

    The Resizer builds a new LongestMaxSize / PadIfNeeded / SmallestMaxSize / CenterCrop for every
    image; constructing one runs albumentations' pydantic validation (~0.2 ms per image for
    `border`, a quarter of the whole resize + re-encode). These transforms are deterministic
    (p=1.0, no random parameters), so one instance per distinct argument set gives the same pixels:
    build it once and reuse it. Anything else is the real module's attribute.
    """

    CACHED = ("LongestMaxSize", "SmallestMaxSize", "PadIfNeeded", "CenterCrop")

    def __init__(self, module):
        self._module = module
        self._made: dict = {}

    def __getattr__(self, name):
        attr = getattr(self._module, name)
        if name not in self.CACHED:
            return attr

        def make(**kwargs):
            key = (name, repr(sorted(kwargs.items())))
            made = self._made.get(key)
            if made is None:
                made = self._made[key] = attr(**kwargs)
                if name == "PadIfNeeded" and set(kwargs) <= {"min_height", "min_width", "border_mode", "value", "p"}:
                    made = self._made[key] = _PadIfNeeded(made, kwargs["min_height"], kwargs["min_width"])
            return made
        return make


class _PadIfNeeded:
    """PadIfNeeded that hands back an image already at least min_height x min_width as it is.

    albumentations would copy it through cv2.copyMakeBorder with zero borders (the same pixels) after
    its per-call bookkeeping (~0.05 ms per image); in `border` mode that is every image whose longest
    side the resize has just made `image_size` on both sides, or that was square. Smaller images are
    padded by albumentations itself.
    """

    def __init__(self, transform, min_height: int, min_width: int):
        self._transform, self._h, self._w = transform, min_height, min_width

    def __call__(self, *args, **kwargs):
        image = kwargs.get("image")
        if not args and set(kwargs) == {"image"} and image.shape[0] >= self._h and image.shape[1] >= self._w:
            return {"image": image}
        return self._transform(*args, **kwargs)


def _hooked_download_image(row, timeout, user_agent_token, disallowed_header_directives):
    """img2dataset's download_image, fetched through urlsafety and checked as an image."""
    from img2dataset.downloader import is_disallowed  # img2dataset: see the module docstring

    key, url = row
    h = _HOOK
    try:
        agent = urlsafety.USER_AGENT
        if user_agent_token:
            agent += f" (compatible; {user_agent_token}; +https://github.com/rom1504/img2dataset)"
        data, headers = urlsafety.fetch(url, h["policy"], timeout=timeout, deadline=h["deadline"],
                                        max_bytes=h["max_bytes"], user_agent=agent)
        if disallowed_header_directives and is_disallowed(headers, user_agent_token, disallowed_header_directives):
            return key, None, "disallowed by X-Robots-Tag"
        problem = inspect_image(data, h["max_area"])
        if problem:
            return key, None, problem
        return key, io.BytesIO(data), None
    except urlsafety.Refused as exc:
        return key, None, f"refused: {exc.reason}"
    except urlsafety.FetchError as exc:
        return key, None, exc.reason
    except Exception as exc:  # noqa: BLE001 - never let one url break the shard
        return key, None, f"{exc.__class__.__name__}: {str(exc)[:80]}"


def inspect_image(data: bytes, max_area: float) -> str | None:
    """Check a body before anything decodes it in full: a reason, or None when it looks sound.

    - not an image: no decoder recognises the header;
    - image too large (pixels): width*height from the header exceeds ``max_area`` — a
      decompression bomb is a tiny file that declares a huge canvas, so this check must come
      before decoding (cv2 would allocate the whole canvas);
    - truncated image: a JPEG whose entropy-coded data ends early (cv2 would decode it "fine",
      grey bottom and all) — one without its end marker is decoded at 1/8 scale, which raises
      when data is missing; other formats are verified (chunk CRCs for PNG).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        return "image too large (pixels)"
    except Exception:  # noqa: BLE001
        return "not an image"
    with im:
        w, h = im.size
        if w * h > max_area:
            return "image too large (pixels)"
        if w < 1 or h < 1:
            return "not an image"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if im.format == "JPEG":
                    # A complete JPEG ends with the EOI marker (FF D9), perhaps padded: then skip the
                    # decode. Without it, decode at 1/8 scale: Pillow raises when the data ends early.
                    if data.rstrip(b"\0 \r\n")[-2:] != b"\xff\xd9":
                        im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
                        im.load()
                else:
                    im.verify()
        except Exception:  # noqa: BLE001
            return "truncated image"
    return None


class _HookedWriter:
    """Stands in for img2dataset's WebDatasetSampleWriter; constructed after installing the fetch hook.

    It writes img2dataset's per-shard parquet as that writer does (one row per url, with status,
    error and size), plus a ``sha256`` column of the stored bytes, and writes the shard's images
    straight into *our* webdataset tar ``{name}.tar``: our key (our shard name + the row's position,
    carried in the ``row`` column), ``{key}.jpg``, ``{key}.txt``, ``{key}.json`` — the bytes
    write_shard_files would write. The parent then only renames the finished tar into the pool
    (step 4): no second pass over the images, and the tar work is spread over the worker processes
    instead of the one process that plans. Both files are complete when img2dataset writes
    ``{name}_stats.json``, which it does after close().
    """

    def __init__(self, shard_id, output_folder, save_caption, oom_shard_count, schema, encode_format):
        _install_hook(output_folder)
        from img2dataset.writer import BufferedParquetWriter  # img2dataset: see the module docstring

        name = f"{shard_id:0{oom_shard_count}d}"
        self._shard = _HOOK["shards"][shard_id]
        self._width = _HOOK["key_width"]
        self._fh = open(f"{output_folder}/{name}.tar", "wb", buffering=1 << 20)  # noqa: SIM115 - closed in close()
        self._tar = TarStream(self._fh)
        self._parquet = BufferedParquetWriter(f"{output_folder}/{name}.parquet",
                                              schema.append(pa.field("sha256", pa.string())), 100)

    def write(self, img_str, key, caption, meta):
        meta["sha256"] = None
        if img_str is not None:
            our_key = f"{self._shard}{meta['row']:0{self._width}d}"
            meta["sha256"], members = sample_members(our_key, self._shard, meta, img_str)
            for member, blob in members:
                self._tar.add(member, blob)
        self._parquet.write(meta)

    def close(self):
        self._parquet.close()
        self._tar.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())  # the parent renames it into the pool: durable first, as atomic_path
        self._fh.close()


class _LazyModule(types.ModuleType):
    """A module imported on first attribute access (then it is the real one in sys.modules)."""

    def __getattr__(self, name):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


class _NoLogger:
    """Stands in for img2dataset's LoggerProcess: we report progress ourselves, and a logger
    process is one more process that could outlive a killed run."""

    def __init__(self, *args, **kwargs):
        self.done_shards = set()

    def start(self):
        pass

    def join(self, timeout=None):
        pass

    def terminate(self):
        pass


def _worker_init() -> None:
    """Start of every img2dataset pool worker: die with the runner, and skip importing torch."""
    _set_pdeathsig()
    sys.modules.setdefault("torch", None)  # see runner_main


def _pool_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
    """img2dataset's multiprocessing_distributor, with a worker initializer (_worker_init).

    img2dataset uses a "spawn" pool: every worker is a fresh interpreter that imports img2dataset
    (albumentations, OpenCV, pandas, wandb: ~1.8 s of CPU each, as much as fetching ~1000 images
    on loopback). The runner has already imported all of it, so the workers are forked from it
    instead and start at once. The runner is single-threaded when the pool is made (the
    LoggerProcess is ours, a no-op); a worker replaced after maxtasksperchild shards is forked while
    the pool's own handler threads run, as with Python's default "fork" pools on Linux.
    """
    from img2dataset.distributor import retrier  # img2dataset: see the module docstring

    with get_context("fork").Pool(processes_count, maxtasksperchild=5, initializer=_worker_init) as pool:
        def run(gen):
            return [row for ok, row in pool.imap_unordered(downloader, gen) if ok is False]

        retrier(run, run(reader), max_shard_retry)
        pool.terminate()
        pool.join()


def _inline_distributor(processes_count, downloader, reader, subjob_size, max_shard_retry):
    """processes == 1: run img2dataset's Downloader in the runner itself (saves spawning a pool)."""
    failed = [row for row in reader if not downloader(row)[0]]
    for _ in range(max_shard_retry):
        failed = [row for row in failed if not downloader(row)[0]]


def runner_main(job_file: str) -> None:
    """The child process (``python -c ... job.json``): dies with us, runs img2dataset.download().

    It is started with its own session (process group), stdout/stderr going to the run's log.
    """
    _set_pdeathsig()
    job = json.loads(Path(job_file).read_text("utf-8"))
    if os.getppid() != job["parent_pid"]:  # the parent died before prctl took effect
        os._exit(1)
    # Second line of defence against bombs in formats PIL does not parse: OpenCV's own limit.
    os.environ["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(int(min(job["max_area"], 2 ** 62)))
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check on import
    # img2dataset's writer imports webdataset, which imports torch only to offer a DataLoader; nothing
    # here needs it, and it is a third of the start-up time. A None entry makes `import torch` fail
    # fast, and webdataset then falls back to its stand-ins.
    sys.modules.setdefault("torch", None)
    # Two more imports nothing here uses (~1 s of the start-up together): img2dataset's logger
    # imports wandb at the top (we never enable it, and its LoggerProcess is replaced below), and
    # its distributor module imports Ray to define the Ray distributor, needed only with --distributor ray.
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    if job["kwargs"]["distributor"] != "ray":
        sys.modules.setdefault("ray", None)  # `import ray` raises ModuleNotFoundError, which img2dataset expects
    # albumentations imports huggingface_hub (~0.15 s) only to offer saving pipelines to the Hub, and
    # does without it when the import fails. albumentations itself (~0.6 s) is needed only to resize:
    # with resize_mode "no" img2dataset never calls it, so it is imported on first use only.
    sys.modules.setdefault("huggingface_hub", None)
    if job["kwargs"]["resize_mode"] == "no":
        sys.modules.setdefault("albumentations", _LazyModule("albumentations"))
    # img2dataset imports at the top what only other paths use: pandas (~0.2 s; its reader needs it
    # for JSON input, ours is Parquet), webdataset (its tar writer, replaced by _HookedWriter) and
    # fire (its command line). Imported on first use, if any.
    for name in ("pandas", "webdataset", "fire"):
        sys.modules.setdefault(name, _LazyModule(name))
    # Only now, with the stand-ins above in place (see the module docstring):
    import img2dataset  # noqa: F401  (the package re-exports a function named `main`: take the module)

    i2d_main = sys.modules["img2dataset.main"]
    i2d_main.WebDatasetSampleWriter = _HookedWriter
    i2d_main.LoggerProcess = _NoLogger
    i2d_main.multiprocessing_distributor = _inline_distributor if job["inline"] else _pool_distributor
    i2d_main.download(**job["kwargs"])
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip interpreter teardown: img2dataset's pools have been known to hang in it

