"""clipcurate's stages and the core they share.

One sub-package per stage (``clipcurate.<stage>``, the folders under pipeline/), listed in pipeline
order in :mod:`clipcurate.stages`; the shared machinery is ``clipcurate.core``. Every stage is usable
from Python without the CLI::

    from clipcurate.core.workspace import Workspace
    ws = Workspace("./workspace")
"""

if __name__ != "clipcurate":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate, not {__name__} (this folder is installed as clipcurate: pip install -e .)")
__version__ = "0.1.0"
