"""clipcurate's stages and the core they share.

Every stage module (``pipeline/<stage>.py``) is usable from Python without the CLI::

    from clipcurate.core.workspace import Workspace
    ws = Workspace("./workspace")
"""

if __name__ != "clipcurate":  # the folder was put on sys.path by hand: there is one import name
    raise ImportError(f"import clipcurate, not {__name__} (this folder is installed as clipcurate: pip install -e .)")
__version__ = "0.1.0"
