"""The list of stage modules. Importing this registers every manifest, config section, status
probe and canned SQL report. Each stage issue adds its module here, in pipeline order."""

# noqa: F401 — imported for their registrations
STAGE_MODULES: list[str] = [
    "queries",
    "executor",  # not a stage: the [executor] config section behind --executor local|ray
    "download",
    "bench",
    "embed",
    "detector",
    "signals",  # pHash/dHash cache (manifest `hashes`), keypoints, caption MinHash
    "overlap",
    "calibrate",  # `overlap calibrate`: its config section and the calibration manifest
    "review",
    "curate",
    "train",
    "eval",
    "run",  # `clipcurate run` / `demo`: step markers under run/
]

import importlib as _importlib

for _name in STAGE_MODULES:
    _importlib.import_module(f"pipeline.{_name}")
