"""A copy-detection development set from real photographs that ship inside installed packages.

Sources (never scikit-image's data photos: they are kept for an independent check):

- scikit-learn's sample images ``china.jpg`` and ``flower.jpg`` (``sklearn.datasets.load_sample_images``,
  in the ``dev`` extra);
- matplotlib's ``grace_hopper.jpg`` (``mpl-data/sample_data``);
- matplotlib's ``jacksboro_fault_dem.npz`` elevation model, rendered as a hill-shaded relief
  (a real measured surface with repetitive ridges: a texture-like hard case).

How the set is built (deterministic from ``--seed``):

1. **Tiles.** Boxes of 48–112 px (aspect 3:4 to 4:3) are drawn at random on each source and kept
   when they overlap every kept box by at most 25 % of the smaller one, so two tiles are distinct
   images — but neighbouring tiles of one photo share its colours, lighting and texture, and tiles
   of the relief or of the flower's petals are self-similar: the hard negatives. Near-flat tiles
   (grey std under 8: sky, blurred background) are dropped — such images carry no copy evidence
   and the overlap stage's degenerate check exists for them. Each tile is resized so its longer
   side is 128 px.
2. **Benchmark and distractors.** 60 % of the tiles are benchmark images; the rest go into the pool
   as themselves (neighbours of benchmark tiles that are not copies).
3. **Planted copies.** Every benchmark tile gets three copies in the pool: one App. C copy
   (``clipcurate.core.augment.app_c_copy`` at full strength) and two everyday edits, cycling through
   :data:`EDITS` (what reposting does to a photo: recompression, resizing, crops, borders and
   letterboxes, mirroring, greyscale, gamma, text overlays, screenshot-like padding, small
   rotations, and a few of them chained; ``clipcurate.overlap.edits``, which `overlap calibrate`
   plants too).
4. **Halves.** Benchmark tiles are split at random into a *choose* half (thresholds and rules are
   chosen on its pairs) and a *held-apart* half (figures are reported on its pairs only).

    python benchmarks/realphoto_devset.py --out /tmp/devset     # writes the images + truth.parquet
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clipcurate.core.augment import app_c_copy  # noqa: E402
from clipcurate.overlap.edits import EDITS  # noqa: E402

SIDE = 128  # longer side of every tile


def sources() -> dict[str, Image.Image]:
    """The real photographs (and the rendered relief) as RGB images."""
    import matplotlib  # matplotlib: only the dev set needs it
    from matplotlib import cbook
    from matplotlib.colors import LightSource
    from sklearn.datasets import load_sample_images

    out = {}
    imgs = load_sample_images()
    for name, arr in zip(imgs.filenames, imgs.images):
        out[Path(name).stem] = Image.fromarray(arr).convert("RGB")
    out["grace_hopper"] = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    dem = np.load(cbook.get_sample_data("jacksboro_fault_dem.npz", asfileobj=False))["elevation"].astype(float)
    rgb = LightSource(azdeg=315, altdeg=45).shade(dem, cmap=matplotlib.colormaps["gist_earth"], blend_mode="overlay",
                                                   vert_exag=0.05)
    out["relief"] = Image.fromarray((rgb[..., :3] * 255).astype(np.uint8))
    return out


def _overlap(a, b) -> float:
    """Intersection area over the smaller box's area."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    return w * h / min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))


def tiles(srcs: dict[str, Image.Image], rng: np.random.Generator, tries: int = 4000,
          max_overlap: float = 0.25) -> list[tuple[str, tuple, Image.Image]]:
    """(source name, box, tile) for boxes that overlap each other by at most ``max_overlap``."""
    out = []
    for name, img in srcs.items():
        w, h = img.size
        kept: list[tuple] = []
        for _ in range(tries):
            side = int(rng.integers(48, 113))
            asp = float(rng.uniform(0.75, 1.333))
            bw, bh = int(round(side * min(1, asp))), int(round(side * min(1, 1 / asp)))
            x0, y0 = int(rng.integers(0, w - bw + 1)), int(rng.integers(0, h - bh + 1))
            box = (x0, y0, x0 + bw, y0 + bh)
            if all(_overlap(box, k) <= max_overlap for k in kept):
                kept.append(box)
        for box in kept:
            t = img.crop(box)
            if np.asarray(t.convert("L"), np.float32).std() < 8:  # near-flat (sky, blurred background)
                continue
            s = SIDE / max(t.size)
            out.append((name, box, t.resize((round(t.width * s), round(t.height * s)), Image.Resampling.LANCZOS)))
    return out


@dataclasses.dataclass
class DevSet:
    bench: list[Image.Image]
    pool: list[Image.Image]
    copy_of: np.ndarray  # pool index → benchmark index it copies, or -1
    kind: list[str]  # pool index → "app_c", an EDITS name, or "distractor"
    held_apart: np.ndarray  # benchmark index → True for the held-apart half
    origin: list[str]  # benchmark index → "source:x0,y0"

    @property
    def truth(self) -> np.ndarray:
        """[bench, pool] booleans: pool image j is a copy of benchmark image i."""
        return self.copy_of[None, :] == np.arange(len(self.bench))[:, None]


def build(seed: int = 0, bench_frac: float = 0.6) -> DevSet:
    rng = np.random.default_rng(seed)
    tl = tiles(sources(), rng)
    order = rng.permutation(len(tl))
    n_bench = int(round(bench_frac * len(tl)))
    bench_t = [tl[i] for i in order[:n_bench]]
    other = [tl[i] for i in order[n_bench:]]
    pool, copy_of, kind = [], [], []
    names = list(EDITS)
    for i, (_, _, img) in enumerate(bench_t):
        pool.append(app_c_copy(img, int(rng.integers(1 << 31)), strength=1.0))
        copy_of.append(i)
        kind.append("app_c")
        for k in (names[(2 * i) % len(names)], names[(2 * i + 1) % len(names)]):
            pool.append(EDITS[k](img, rng))
            copy_of.append(i)
            kind.append(k)
    for _, _, img in other:
        pool.append(img)
        copy_of.append(-1)
        kind.append("distractor")
    perm = rng.permutation(len(pool))
    held = np.zeros(n_bench, bool)
    held[rng.permutation(n_bench)[: n_bench // 2]] = True
    return DevSet([t[2] for t in bench_t], [pool[j] for j in perm], np.array(copy_of)[perm], [kind[j] for j in perm],
                  held, [f"{s}:{b[0]},{b[1]}" for s, _, b in ((t[0], None, t[1]) for t in bench_t)])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for bench/*.png, pool/*.jpg and truth.parquet")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import pyarrow as pa
    import pyarrow.parquet as pq

    ds = build(args.seed)
    out = Path(args.out)
    (out / "bench" / "tile").mkdir(parents=True, exist_ok=True)
    (out / "pool").mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(ds.bench):
        im.save(out / "bench" / "tile" / f"{i:04d}.png")
    for j, im in enumerate(ds.pool):
        im.convert("RGB").save(out / "pool" / f"{j:05d}.jpg", quality=92)
    pq.write_table(pa.table({"pool_file": [f"{j:05d}.jpg" for j in range(len(ds.pool))],
                             "bench_index": ds.copy_of.tolist(), "kind": ds.kind,
                             "held_apart": [bool(ds.held_apart[c]) if c >= 0 else None for c in ds.copy_of]}),
                   out / "truth.parquet")
    print(f"{len(ds.bench)} benchmark tiles, {len(ds.pool)} pool images "
          f"({int((ds.copy_of >= 0).sum())} copies) → {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
