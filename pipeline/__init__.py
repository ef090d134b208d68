"""clipcurate's stages and the core they share.

Every stage module (``pipeline/<stage>.py``) is usable from Python without the CLI::

    from pipeline.workspace import Workspace
    ws = Workspace("./workspace")
"""

__version__ = "0.1.0"
