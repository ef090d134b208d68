"""Packaging that pyproject.toml cannot say: the package map and the C extension of `queries build`.

One import name, ``clipcurate``, from the repository's three source folders::

    pipeline/  ->  clipcurate            (the stages, one sub-package each, and clipcurate.core)
    queries/   ->  clipcurate.queries    (the queries stage: Wikipedia parsing, counting, matching)
    cli/       ->  clipcurate.cli        (the Typer commands)

queries/_fastcount.c is compiled twice: ``clipcurate.queries._fastcount`` for any CPU and, on
x86-64, ``clipcurate.queries._fastcount_avx2`` with ``-mavx2`` (its scanners read 8 characters per
instruction instead of 4); queries/fastcount.py loads the second only when the CPU has AVX2.

``optional=True``: on a machine without a C compiler the install still succeeds and
``queries build`` counts with the pure-Python reference (queries/wikitext.py), slower, same output.
"""

import platform

from setuptools import Extension, find_packages, setup

PACKAGE_DIR = {"clipcurate": "pipeline", "clipcurate.queries": "queries", "clipcurate.cli": "cli"}
PACKAGES = ["clipcurate", "clipcurate.queries", "clipcurate.cli"]
PACKAGES += [f"clipcurate.{p}" for p in find_packages("pipeline")]

SOURCES = ["queries/_fastcount.c"]
extensions = [Extension("clipcurate.queries._fastcount", sources=SOURCES, extra_compile_args=["-O3"], optional=True)]
if platform.machine().lower() in ("x86_64", "amd64"):
    extensions.append(Extension(
        "clipcurate.queries._fastcount_avx2", sources=SOURCES, extra_compile_args=["-O3", "-mavx2"],
        define_macros=[("FASTCOUNT_MODNAME", "_fastcount_avx2")], optional=True))

setup(package_dir=PACKAGE_DIR, packages=PACKAGES, ext_modules=extensions)
