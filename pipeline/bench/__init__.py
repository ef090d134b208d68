"""The benchmark registry (``clipcurate bench add`` / ``bench list``): benchmarks copied into
``benchmarks/{name}/`` so every later stage sees exactly the same samples.

Public API (what the CLI, ``clipcurate run`` and other stages may call)::

    from clipcurate import bench

    bench.add(ws, "cifar10", "torchvision:CIFAR10")     # -> benchmarks/cifar10/ (returns meta.json)
    bench.list_benchmarks(ws)                            # meta.json of each, by name
    b = bench.load(ws, "cifar10", columns=["uid"])       # a Benchmark: samples, classes, templates, kind
    bench.prompts(b.classes, b.templates)                # class-major zero-shot prompts
    bench.bench_dir(ws, "cifar10")                       # the benchmark's folder
    for key, files in bench.tar_samples(path): ...       # (key, {ext: bytes}) of a webdataset tar

``IMAGE_EXTS`` are the image extensions a benchmark source may hold; ``BENCHMARKS`` is the
manifest (``benchmarks/*/samples.parquet``). Modules: ``stage`` (add, list, load; the writing),
``sources`` (the readers of each source layout).
"""

from clipcurate.bench.sources import IMAGE_EXTS, tar_samples
from clipcurate.bench.stage import (BENCHMARKS, DEFAULT_TEMPLATES, KINDS, Benchmark, add, bench_dir,
                                    list_benchmarks, load, prompts)

__all__ = ["add", "list_benchmarks", "load", "prompts", "bench_dir", "tar_samples", "Benchmark", "BENCHMARKS",
           "DEFAULT_TEMPLATES", "KINDS", "IMAGE_EXTS"]
