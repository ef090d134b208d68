"""Stage `train`: open_clip_train, in process, on the curated shards.

We do not reimplement training: this module turns a few options into the argument list of
``open_clip_train.main.main`` — the same ``python -m open_clip_train.main`` everyone uses — and runs
it in this process after registering our model configs (so ``clipcurate-tiny`` is an architecture
open_clip knows). What it adds around the call:

1. **Inputs.** The curated shards' brace pattern (``curate/shards/{00000..000NN}.tar``) and their
   sample count from ``curate/shards/sizes.json``. ``epochs`` passes over the curated set, or — when
   ``samples`` is set — that many samples seen in total, drawn with replacement
   (``--dataset-resampled``) and split into ``epochs`` checkpoints, as DataComp does.
2. **Checks that would otherwise hang or crash deep inside.** open_clip's webdataset loader repeats
   each worker's shards until it has filled its batches, so a batch larger than what a worker can
   ever read would loop forever; and it asserts ``shards >= workers``. Both become one clear line
   (workers are lowered to the number of shards instead).
3. **Resumability.** Always ``--resume latest --save-most-recent``: open_clip writes
   ``epoch_latest.pt`` through a temp file + rename, so a kill -9 never leaves a torn checkpoint to
   resume from; a rerun continues at the last finished epoch, and a finished run is a no-op.
4. **The loss curve.** ``--log-every-n-steps`` lines in ``train/{run}/train.log`` are parsed into
   ``train/{run}/losses.json`` so tests and users can see the loss fall.

Everything lands in ``train/{run}/``: ``train.log``, ``params.txt``, ``run.json`` (what we asked for),
``checkpoints/epoch_N.pt`` and ``epoch_latest.pt``.

Three in-process adjustments. webdataset's sample shuffle seeds itself from the pid and the clock
unless given a generator, and open_clip_train gives none: we hand it one seeded from ``--seed``, so
the same seed gives the same data order. The other two are invisible to the data: open_clip_train's ``setup_logging`` adds
handlers to the root logger on every call (removed again afterwards, so repeated runs do not log
into each other's files), and webdataset >= 0.2.9x ends every shard with an empty end-of-shard
dict that open_clip_train 3.3's ``group_by_keys_nothrow`` cannot read (``KeyError: 'fname'``); we
drop those markers before they reach it. See docs/train.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import random
import re
import shutil
from pathlib import Path

from clipcurate.core import config
from clipcurate.core.console import console, log
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.io import read_json, write_json
from clipcurate.core.models import deterministic, determinism_settings, pinned_threads, register_configs, \
    resolve_device
from clipcurate.core.stage import Stage, is_done, marker
from clipcurate.core.workspace import Workspace
from clipcurate.curate import read_sizes, shard_pattern

DEFAULTS = {
    "model": "clipcurate-tiny",
    "batch_size": 64,
    "epochs": 1,
    "samples": 0,
    "lr": 5e-4,
    "wd": 0.2,
    "warmup": 10,
    "precision": "auto",
    "workers": 2,
    "device": "auto",
    "seed": 0,
    "data": "clean",
    "threads": 0,
    "save_frequency": 1,
    "log_every": 10,
}
config.section("train", DEFAULTS, {
    "model": "open_clip architecture (clipcurate-tiny, ViT-B-32, ...)",
    "batch_size": "batch size per device",
    "epochs": "passes over the curated set (or checkpoints, when samples is set)",
    "samples": "total samples seen, drawn with replacement (0: epochs x curated size)",
    "lr": "peak learning rate (cosine schedule)",
    "wd": "weight decay",
    "warmup": "warmup steps",
    "precision": "auto (amp on CUDA, fp32 on CPU), amp, amp_bf16, fp32, ...",
    "workers": "dataloader workers",
    "device": "auto, cpu, cuda, cuda:N",
    "seed": "random seed",
    "data": "training set: clean (curate/shards) or all (curate/all/shards, the pool as downloaded)",
    "threads": "torch intra-op threads, pinned for reproducibility (0: the machine's CPU count, at most 8)",
    "save_frequency": "save epoch_N.pt every N epochs (the last epoch is always saved)",
    "log_every": "log the loss every N steps",
})


_LOSS_LINE = re.compile(
    r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?\bLoss: ([-+0-9.eEnaif]+)")


@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None
    losses: list[dict]  # {"epoch", "samples", "loss"} in log order
    epochs_done: int


def run_dir(ws: Workspace, run: str) -> Path:
    return ws.path("train", run)


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest finished checkpoint in ``train/{run}/checkpoints``: the highest ``epoch_N.pt``
    not newer than ``epoch_latest.pt`` (written last, by rename), else ``epoch_latest.pt`` itself."""
    folder = Path(folder)
    numbered = sorted(((int(m.group(1)), p) for p in folder.glob("epoch_*.pt")
                       if (m := re.fullmatch(r"epoch_(\d+)\.pt", p.name))), key=lambda t: t[0])
    latest = folder / "epoch_latest.pt"
    if latest.is_file():
        try:
            import torch  # 2.6 s to import: not at module level, which `clipcurate status` imports

            done = int(torch.load(latest, map_location="cpu", weights_only=True, mmap=True)["epoch"])
        except Exception:  # a torn epoch_latest.pt cannot exist (rename), but be safe
            done = None
        if done is not None:
            for n, p in reversed(numbered):
                if n == done:
                    return p
        return latest
    return numbered[-1][1] if numbered else None


def parse_losses(log_file: Path) -> list[dict]:
    """The ``Train Epoch: E [seen/total ...] ... Loss: X (avg)`` lines of open_clip_train's log
    (train/{run}/train.log)."""
    out = []
    if not Path(log_file).is_file():
        return out
    for line in Path(log_file).read_text("utf-8", errors="replace").splitlines():
        m = _LOSS_LINE.search(line)
        if m:
            out.append({"epoch": int(m.group(1)), "samples": int(m.group(2)), "loss": float(m.group(4))})
    return out


class _StepBar(logging.Handler):
    """open_clip_train's per-step log records ("Train Epoch: 3 [ 64/1216 (5%)] ... Loss: 4.05 ...") as
    one progress bar on the console: epoch, step and loss. Everything else it logs stays in its file
    (train/{run}/train.log)."""

    STEP = re.compile(r"Train Epoch: (\d+) \[\s*(\d+)/(\d+).*?Loss: ([\d.]+)")

    def __init__(self, epochs: int, per_epoch: int, batch_size: int):
        super().__init__(level=logging.INFO)
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.epochs, self.batch = epochs, max(1, batch_size)
        self.steps = max(1, math.ceil(per_epoch / self.batch))  # steps per epoch
        self.bar = Progress(TextColumn("[bold]train[/] epoch {task.fields[epoch]}/{task.fields[epochs]} "
                                       "step {task.fields[step]}/{task.fields[steps]} loss {task.fields[loss]}"),
                            BarColumn(), TimeElapsedColumn(), console=console, transient=False)
        self.task = self.bar.add_task("train", total=epochs * self.steps, epoch=0, epochs=epochs, step=0,
                                      steps=self.steps, loss="–")
        self.bar.start()

    def emit(self, record: logging.LogRecord) -> None:
        m = self.STEP.search(record.getMessage())
        if m is None:
            return
        epoch, seen, _, loss = int(m.group(1)), int(m.group(2)), m.group(3), float(m.group(4))
        step = min(self.steps, math.ceil(seen / self.batch))
        self.bar.update(self.task, completed=epoch * self.steps + step, epoch=epoch + 1, step=step,
                        loss=f"{loss:.4f}")

    def close(self) -> None:
        self.bar.stop()
        super().close()


LOG_FILE = "train.log"  # open_clip_train's own log (it calls it out.log; we point it here)


@contextlib.contextmanager
def _open_clip_in_process(quiet: bool, bar: dict | None = None, seed: int = 0):
    """Patch the two things that make open_clip_train awkward to call in process; undo after."""
    # open_clip_train imports torch (2.6 s) and open_clip (6.4 s); `clipcurate --help` stays 0.5 s
    import open_clip_train.data as ocd  # open_clip_train: imports torch + open_clip (9 s), only when training
    import open_clip_train.main as ocm  # open_clip_train: imports torch + open_clip (9 s), only when training

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    # a root handler that another library installed (logging.basicConfig: "INFO:root:...") would print
    # every record once open_clip_train sets the root level to INFO: detached while it runs
    terminal = [h for h in handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    for h in terminal:
        root.removeHandler(h)
    # setup_logging sets every existing logger to INFO (torch's included, which then chatter at exit)
    levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
              if isinstance(lg, logging.Logger)}
    orig_setup, orig_group = ocm.setup_logging, ocd.group_by_keys_nothrow

    def setup_logging(log_file, level, include_host=False):
        # open_clip_train's file log goes to train/{run}/train.log (it names it out.log); its stderr
        # lines (the model's repr, every hyper-parameter, a line per step) never reach the terminal:
        # one progress bar does
        if log_file:
            log_file = str(Path(log_file).with_name(LOG_FILE))
        orig_setup(log_file, level, include_host)
        for h in list(root.handlers):
            if h not in handlers and type(h) is logging.StreamHandler:
                root.removeHandler(h)
        if not quiet and bar:
            root.addHandler(_StepBar(**bar))

    def group_by_keys_nothrow(data, *args, **kwargs):
        # webdataset's end-of-shard marker is an empty dict without "fname": skip it
        return orig_group((s for s in data if "fname" in s), *args, **kwargs)

    orig_shuffle = ocd.wds.shuffle

    def seeded_shuffle(*args, **kwargs):
        # webdataset's sample shuffle seeds itself from the pid and the clock when given no rng, and
        # open_clip_train gives none: the data order would change from run to run. Seed it.
        if kwargs.get("rng") is None:
            kwargs["rng"] = random.Random(seed)
        return orig_shuffle(*args, **kwargs)

    ocm.setup_logging, ocd.group_by_keys_nothrow, ocd.wds.shuffle = setup_logging, group_by_keys_nothrow, seeded_shuffle
    try:
        yield
    finally:
        ocm.setup_logging, ocd.group_by_keys_nothrow, ocd.wds.shuffle = orig_setup, orig_group, orig_shuffle
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
                h.close()
        for h in terminal:
            root.addHandler(h)
        root.setLevel(level)
        for name, lg in logging.root.manager.loggerDict.items():
            if isinstance(lg, logging.Logger):
                lg.setLevel(levels.get(name, logging.NOTSET))


def _workers_and_batch(sizes: dict[str, int], workers: int, batch_size: int, resampled: bool) -> int:
    """Lower workers to the shard count; refuse a batch that some worker could never fill."""
    counts = sorted(sizes.values())
    total = sum(counts)
    if batch_size < 1:
        raise ClipcurateError(f"batch size {batch_size!r} must be at least 1")
    if resampled:
        if batch_size > total:
            raise ClipcurateError(f"batch size {batch_size} is larger than the {total} curated samples; "
                                  f"pass --batch-size {total} or less")
        return workers
    if workers > len(counts):
        log(f"train: {len(counts)} curated shard(s), so {len(counts)} dataloader worker(s) instead of {workers}")
        workers = len(counts)
    # each worker reads at least len // workers shards; the smallest such set must fill a batch
    per = max(1, len(counts) // max(1, workers))
    least = sum(counts[:per])
    if batch_size > least:
        raise ClipcurateError(
            f"batch size {batch_size} is larger than the {least} samples one of {max(1, workers)} dataloader "
            f"worker(s) may get from {len(counts)} shard(s) of {total} samples; pass --batch-size {least} "
            f"or less (or --workers 1, or reshard with a larger `clipcurate curate --shard-size`)")
    return workers


def _options(run: str, options: dict) -> dict:
    opts = {**DEFAULTS, **{k: v for k, v in options.items() if v is not None}}
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise ClipcurateError(f"unknown train option(s) {sorted(unknown)}; known: {', '.join(sorted(DEFAULTS))}")
    if not re.fullmatch(r"[A-Za-z0-9._-]+", run or ""):
        raise ClipcurateError(f"run name {run!r} must use letters, digits, '.', '_' or '-' only")
    return opts


def _curated_inputs(ws: Workspace, opts: dict) -> dict:
    """The curated shards' pattern and what one epoch holds, checked against the batch size."""
    sizes = read_sizes(ws, opts["data"])
    total = sum(sizes.values())
    if total == 0:
        raise ClipcurateError("the curated set is empty (curate/shards/sizes.json sums to 0): "
                              "rerun `clipcurate curate` on a pool with successful downloads")
    shards = sorted(s[:-len(".tar")] for s in sizes)
    epochs = int(opts["epochs"])
    if epochs < 1:
        raise ClipcurateError(f"epochs {epochs!r} must be at least 1")
    resampled = int(opts["samples"]) > 0
    per_epoch = math.ceil(int(opts["samples"]) / epochs) if resampled else total
    workers = _workers_and_batch(sizes, int(opts["workers"]), int(opts["batch_size"]), resampled)
    return {"pattern": shard_pattern(ws, shards, opts["data"]), "epochs": epochs, "resampled": resampled,
            "per_epoch": per_epoch, "workers": workers}


def _model_and_device(opts: dict) -> tuple[str, str]:
    """(device, precision), after checking that open_clip knows the architecture."""
    import open_clip  # imports torch (2.6 s) and open_clip (6.4 s); `clipcurate --help` stays 0.5 s

    register_configs()
    if opts["model"] not in open_clip.list_models():
        raise ClipcurateError(f"unknown model {opts['model']!r}: use an open_clip architecture "
                              f"(e.g. clipcurate-tiny, ViT-B-32); see `python -c \"import open_clip; "
                              f"print(open_clip.list_models())\"`")
    device = resolve_device(opts["device"])
    precision = opts["precision"]
    if precision == "auto":
        precision = "amp" if device.startswith("cuda") else "fp32"
    return device, precision


def _argv(ws: Workspace, run: str, want: dict, opts: dict, device: str, workers: int,
          extra_args: list[str] | None) -> list[str]:
    """The open_clip_train command line — exactly what `python -m open_clip_train.main` takes."""
    argv = [
        "--train-data", want["train_data"],
        "--dataset-type", "webdataset",
        "--train-num-samples", str(want["train_num_samples"]),
        "--model", opts["model"],
        "--batch-size", str(int(opts["batch_size"])),
        "--epochs", str(want["epochs"]),
        "--lr", str(float(opts["lr"])),
        "--wd", str(float(opts["wd"])),
        "--warmup", str(int(opts["warmup"])),
        "--precision", want["precision"],
        "--workers", str(workers),
        "--device", device,
        "--seed", str(int(opts["seed"])),
        "--logs", str(ws.path("train")),
        "--name", run,
        "--save-frequency", str(int(opts["save_frequency"])),
        "--save-most-recent",
        "--resume", "latest",
        "--log-every-n-steps", str(max(1, int(opts["log_every"]))),
    ]
    if want["resampled"]:
        argv.append("--dataset-resampled")
    return argv + list(extra_args or [])


class TrainRun(Stage):
    """One training run as a shard of ``train/``, whose shards are the runs (``train/{run}/``).

    The runner writes ``train/_plan.json``, ``train/{run}.done`` after open_clip_train returns and
    ``train/_SUCCESS`` last. The plan lists the finished runs (those with a marker) besides this
    one, so the plan and ``_SUCCESS`` ("every listed run finished") read as they always did. A run
    that is not finished — killed, or training in another process — is left out: the runner would
    try to finish it, and only ``clipcurate train --name RUN`` knows how.
    """

    name = "train"
    description = "train"

    def __init__(self, ws: Workspace, run: str, argv: list[str], quiet: bool, bar: dict | None = None,
                 threads: int = 1):
        super().__init__(ws.path("train"))
        self.reads = ("curate",)  # the runner checks it is complete and current (the clean set)
        self.run_name, self.argv, self.quiet, self.bar, self.threads = run, argv, quiet, bar, threads
        self.rdir = ws.path("train", run)
        self.losses: list[dict] = []
        self.checkpoint: Path | None = None
        self.epochs_done = 0

    def shards(self) -> list[str]:
        runs = sorted(d.name for d in self.folder.iterdir() if (d / "run.json").is_file())
        return [r for r in runs if r == self.run_name or is_done(self.folder, r)]

    def run_shard(self, shard: str) -> dict:
        if shard != self.run_name:
            raise ClipcurateError(f"train run {shard!r} is not finished: resume it with `clipcurate train --name {shard}`")
        # open_clip_train imports torch (2.6 s) and open_clip (6.4 s); `clipcurate --help` stays 0.5 s
        from open_clip_train.main import main as train_main  # open_clip_train: imports torch + open_clip (9 s), only when training

        rdir = self.rdir
        seed = int(self.argv[self.argv.index("--seed") + 1]) if "--seed" in self.argv else 0
        with _open_clip_in_process(self.quiet or console.quiet, self.bar, seed), deterministic(self.threads):
            try:
                rc = train_main(self.argv)
            except (KeyboardInterrupt, ClipcurateError):
                raise
            except BaseException as exc:  # SystemExit from argparse, assertion, CUDA error, ...
                msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
                raise ClipcurateError(f"open_clip_train failed ({exc.__class__.__name__}: {msg}); "
                                      f"see {rdir / 'train.log'}") from None
        if rc not in (None, 0):
            raise ClipcurateError(f"open_clip_train returned {rc}; see {rdir / 'train.log'}")

        self.losses = parse_losses(rdir / "train.log")
        write_json(rdir / "losses.json", self.losses)
        self.checkpoint = latest_checkpoint(rdir / "checkpoints")
        if self.checkpoint is not None:
            import torch  # 2.6 s at module level; here open_clip_train has loaded it already

            self.epochs_done = int(torch.load(self.checkpoint, map_location="cpu", weights_only=True,
                                              mmap=True).get("epoch", 0))
        return {"epochs": self.epochs_done, "logged_steps": len(self.losses)}


def train(ws: Workspace, run: str = "default", *, force: bool = False, quiet: bool = False,
          extra_args: list[str] | None = None, **options) -> TrainResult:
    """Train ``options['model']`` on the curated shards into ``train/{run}/`` (see module doc)."""
    opts = _options(run, options)
    # 1. Inputs: the curated shards and their sizes (written by `clipcurate curate`).
    inputs = _curated_inputs(ws, opts)
    device, precision = _model_and_device(opts)

    # 2. The run folder: resume the same run, refuse to mix in a different one.
    rdir = run_dir(ws, run)
    want = {"model": opts["model"], "train_data": inputs["pattern"], "train_num_samples": inputs["per_epoch"],
            "resampled": inputs["resampled"], "batch_size": int(opts["batch_size"]), "epochs": inputs["epochs"],
            "lr": float(opts["lr"]), "wd": float(opts["wd"]), "warmup": int(opts["warmup"]),
            "precision": precision, "seed": int(opts["seed"]), "data": opts["data"]}
    if force and rdir.exists():
        shutil.rmtree(rdir)
    if (rdir / "run.json").is_file():
        have = read_json(rdir / "run.json")
        have.setdefault("data", "clean")  # runs from before the counterfactual trained on the clean set
        diff = {k: (have.get(k), v) for k, v in want.items() if k != "epochs" and have.get(k) != v}
        if diff:
            k, (a, b) = next(iter(diff.items()))
            raise ClipcurateError(f"run {run!r} was started with {k}={a!r}, now {k}={b!r}: "
                                  f"resume it unchanged, pick another --name, or pass --force to restart it")
    rdir.mkdir(parents=True, exist_ok=True)
    threads = pinned_threads(int(opts["threads"]))
    write_json(rdir / "run.json", {**want, "run": run, "device": device, "workers": inputs["workers"],
                                   "determinism": determinism_settings(threads)})
    # `status`: train/{run}.done marks a finished run; a rerun always goes back to open_clip_train
    # (it resumes at the last epoch, or does nothing when the run is complete), so its marker goes.
    marker(ws.path("train"), run).unlink(missing_ok=True)

    # 3. open_clip_train, in process, as this run's shard of train/.
    argv = _argv(ws, run, want, opts, device, inputs["workers"], extra_args)
    write_json(rdir / "argv.json", argv)
    log(f"train: open_clip_train {' '.join(argv)}")
    bar = {"epochs": inputs["epochs"], "per_epoch": inputs["per_epoch"], "batch_size": int(opts["batch_size"])}
    stage = TrainRun(ws, run, argv, quiet, bar, threads)
    if opts["data"] == "all":
        stage.reads = ("curate/all",)  # the counterfactual's training set: the pool as downloaded
    stage.run()
    losses, ckpt = stage.losses, stage.checkpoint
    if losses:
        log(f"train: loss {losses[0]['loss']:.4f} -> {losses[-1]['loss']:.4f} over {len(losses)} logged steps; "
            f"checkpoint {ckpt}")
    return TrainResult(run_dir=rdir, checkpoint=ckpt, losses=losses, epochs_done=stage.epochs_done)


def run_model(checkpoint: Path) -> str | None:
    """The architecture a train/{run}/checkpoints/*.pt was trained with (from run.json or params.txt)."""
    rdir = Path(checkpoint).resolve().parent.parent
    if (rdir / "run.json").is_file():
        return read_json(rdir / "run.json").get("model")
    if (rdir / "params.txt").is_file():
        for line in (rdir / "params.txt").read_text().splitlines():
            if line.startswith("model: "):
                return line[len("model: "):].strip()
    return None
