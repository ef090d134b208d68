"""`[download]` options: their defaults and help, checked once (``conf_from``), and the URL
safety policy they describe (``policy_from``)."""

from __future__ import annotations

from clipcurate.core import config
from clipcurate.core.errors import ClipcurateError
from clipcurate.core.imageload import MAX_PIXELS
from clipcurate.download import urlsafety
from clipcurate.download.pool import STAGE

DEFAULTS = {
    "url_col": "url",
    "caption_col": "caption",
    "image_size": 256,
    "resize_mode": "border",
    "resize_only_if_bigger": False,
    "encode_quality": 95,
    "skip_reencode": False,
    "processes": 0,
    "threads": 64,
    "samples_per_shard": 10000,
    "timeout": 10.0,
    "retries": 0,
    "fetch_deadline": 30.0,
    "max_body_bytes": 32 * 1024 * 1024,
    "max_image_area": MAX_PIXELS,  # the pixel rule bench add and embed apply too (core.imageload)
    "min_image_size": 0,
    "distributor": "multiprocessing",
    "allow_private": False,
    "allow_hosts": [],
    "hosts": {},
    "stall_timeout": 0.0,
    "user_agent_token": "",
    "disallowed_header_directives": ["noai", "noimageai", "noindex", "noimageindex"],
}
DOCS = {
    "url_col": "input column holding the url (for --input files)",
    "caption_col": "input column holding the caption (for --input files)",
    "image_size": "img2dataset image_size: the stored images' side in pixels",
    "resize_mode": "img2dataset resize_mode: no, keep_ratio, center_crop, border, keep_ratio_largest",
    "resize_only_if_bigger": "img2dataset resize_only_if_bigger",
    "encode_quality": "JPEG quality of the stored images",
    "skip_reencode": "img2dataset skip_reencode: keep a JPEG's own bytes when it needs no resize",
    "processes": "img2dataset processes_count (0 = one per CPU core, at most one per pending shard)",
    "threads": "img2dataset thread_count: concurrent fetches per process",
    "samples_per_shard": "input rows per pool shard",
    "timeout": "seconds a connect or a single socket read may take",
    "retries": "img2dataset retries per url",
    "fetch_deadline": "seconds a whole fetch (headers + body) may take; stops servers that trickle",
    "max_body_bytes": "largest body accepted (by Content-Length and while reading)",
    "max_image_area": "largest width*height accepted, checked on the header before decoding (bombs); at most "
                      "the pixel rule of bench add and embed (89478485)",
    "min_image_size": "img2dataset min_image_size: smaller images fail",
    "distributor": "img2dataset distributor (multiprocessing)",
    "allow_private": "fetch from loopback/private/link-local/reserved addresses (off: refused)",
    "allow_hosts": "hosts exempt from the address check (an internal CDN): host:port, or host = the ports the input's urls use for it",
    "hosts": "static name -> IP address table consulted before DNS (like /etc/hosts)",
    "stall_timeout": "kill img2dataset when no output grows for this many seconds (0 = auto)",
    "user_agent_token": "img2dataset user_agent_token (also matched in X-Robots-Tag)",
    "disallowed_header_directives": "X-Robots-Tag directives that make a url fail",
}
config.section(STAGE, DEFAULTS, DOCS)


def conf_from(cfg: dict | None) -> dict:
    """``[download]`` options over DEFAULTS, checked: one clear error for an unknown key or a bad value."""
    conf = dict(DEFAULTS)
    for k, v in (cfg or {}).items():
        if k not in DEFAULTS:
            raise ClipcurateError(f"unknown download option {k!r}; known: {', '.join(sorted(DEFAULTS))}")
        if v is not None:
            conf[k] = v
    if conf["samples_per_shard"] < 1:
        raise ClipcurateError(f"samples_per_shard {conf['samples_per_shard']!r} must be at least 1")
    if not 0 < float(conf["max_image_area"]) <= MAX_PIXELS:  # one pixel rule: bench add and embed skip larger
        raise ClipcurateError(f"max_image_area {conf['max_image_area']!r}: give 1 to {MAX_PIXELS} (larger images are "
                              f"skipped by bench add and embed too, so the pool never holds them)")
    if conf["distributor"] not in ("multiprocessing", "ray"):
        raise ClipcurateError(f"distributor {conf['distributor']!r} is not supported; use multiprocessing")
    modes = ("no", "keep_ratio", "center_crop", "border", "keep_ratio_largest")
    if conf["resize_mode"] not in modes:
        raise ClipcurateError(f"resize_mode {conf['resize_mode']!r} is not one of {', '.join(modes)}")
    return conf


def policy_from(conf: dict) -> urlsafety.Policy:
    """The URL safety policy of the options (allow_private, allow_hosts, the static hosts table)."""
    hosts = conf["hosts"]
    if isinstance(hosts, str):  # from the environment: "name=ip,name2=ip2"
        pairs = [p.split("=", 1) for p in hosts.split(",") if p.strip()]
        if any(len(p) != 2 for p in pairs):
            raise ClipcurateError(f"[download] hosts {hosts!r}: write it as name=ip,name2=ip2")
        hosts = {k.strip(): v.strip() for k, v in pairs}
    if not isinstance(hosts, dict):
        raise ClipcurateError(f"[download] hosts {hosts!r}: must be a table of name = ip address")
    try:
        return urlsafety.Policy.make(conf["allow_private"], conf["allow_hosts"], hosts)
    except ValueError as exc:
        raise ClipcurateError(f"[download] hosts: {exc}; give IP addresses, e.g. 'cdn.example' = '192.0.2.7'") from None

