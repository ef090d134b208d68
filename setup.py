"""Build the one C extension, queries._fastcount (everything else is in pyproject.toml).

``optional=True``: on a machine without a C compiler the install still succeeds and
``queries build`` counts with the pure-Python reference (queries/wikitext.py), slower, same output.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "queries._fastcount",
            sources=["queries/_fastcount.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
