"""Build the C extension of `queries build` (everything else is in pyproject.toml).

queries/_fastcount.c is compiled twice: ``queries._fastcount`` for any CPU and, on x86-64,
``queries._fastcount_avx2`` with ``-mavx2`` (its scanners read 8 characters per instruction instead
of 4); queries/fastcount.py loads the second only when the CPU has AVX2.

``optional=True``: on a machine without a C compiler the install still succeeds and
``queries build`` counts with the pure-Python reference (queries/wikitext.py), slower, same output.
"""

import platform

from setuptools import Extension, setup

SOURCES = ["queries/_fastcount.c"]
extensions = [Extension("queries._fastcount", sources=SOURCES, extra_compile_args=["-O3"], optional=True)]
if platform.machine().lower() in ("x86_64", "amd64"):
    extensions.append(Extension(
        "queries._fastcount_avx2", sources=SOURCES, extra_compile_args=["-O3", "-mavx2"],
        define_macros=[("FASTCOUNT_MODNAME", "_fastcount_avx2")], optional=True))

setup(ext_modules=extensions)
