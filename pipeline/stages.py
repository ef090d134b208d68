"""The list of stage modules. Importing this registers every manifest, config section, status
probe and canned SQL report. Each stage issue adds its module here, in pipeline order."""

# noqa: F401 — imported for their registrations
STAGE_MODULES: list[str] = [
    "queries.stage",
    "core.executor",  # not a stage: the [executor] config section behind --executor local|ray
    "download.stage",
    "bench.stage",
    "embed.stage",
    "detector.stage",
    "overlap.signals",  # pHash/dHash cache (manifest `hashes`), keypoints, caption MinHash
    "overlap.stage",
    "overlap.calibrate",  # `overlap calibrate`: its config section and the calibration manifest
    "review.session",
    "curate.stage",
    "train.stage",
    "eval.stage",
    "run.runner",  # `clipcurate run` / `demo`: step markers under run/
]

import importlib as _importlib

for _name in STAGE_MODULES:
    _importlib.import_module(f"clipcurate.{_name}")
