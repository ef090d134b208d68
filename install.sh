#!/usr/bin/env bash
# Install clipcurate and everything it needs on a fresh Debian machine with Python ≥ 3.10.
#   ./install.sh         the tool (+ WordNet 3.0 from Debian's wordnet-base when apt is available)
#   ./install.sh --dev   the tool and what the tests need
# Idempotent: rerunning it only checks what is already there.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
extra=""
[ "${1:-}" = "--dev" ] && extra="[dev]"

log() { printf '\033[1minstall:\033[0m %s\n' "$*" >&2; }

# 1. System packages: WordNet 3.0 dict files (queries build reads /usr/share/wordnet).
if [ ! -d /usr/share/wordnet ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  log "apt-get install wordnet-base tmux"
  $SUDO apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed (continuing)"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base tmux >/dev/null 2>&1 \
    || log "could not install wordnet-base; queries build will run without WordNet unless --wordnet is given"
fi

# 1b. A C compiler and Python's headers: setup.py builds the C counter of `queries build`
#     (queries/_fastcount.c); without them the install still works, with a ~5x slower pure-Python counter.
has_headers() { $PY -c "import os, sysconfig; raise SystemExit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" >/dev/null 2>&1; }
if { ! command -v cc >/dev/null 2>&1 || ! has_headers; } && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && SUDO="sudo"
  log "apt-get install gcc python3-dev (to build the C counter)"
  $SUDO apt-get update -qq >/dev/null 2>&1 || true
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc python3-dev >/dev/null 2>&1 \
    || log "could not install gcc/python3-dev; queries build will use the slower pure-Python counter"
fi

# 2. torch + torchvision first, pinned to the builds this platform serves (a range in pyproject admits them).
if ! $PY -c "import torch, torchvision" >/dev/null 2>&1; then
  log "pip install torch torchvision"
  $PY -m pip install -q "torch==2.14.1" "torchvision==0.29.1" \
    || $PY -m pip install -q "torch>=2.3" "torchvision>=0.18"
fi

# 3. The project, editable. "strict" mode installs a tree of links laid out as the package is
#    (pipeline/ -> clipcurate, queries/ -> clipcurate.queries, cli/ -> clipcurate.cli; setup.py), so
#    every tool that reads the package from disk (lint-imports) sees what a wheel holds. Edits show
#    at once; a new module needs this script (or the pip line) once more.
log "pip install -e .${extra}"
$PY -m pip install -q --disable-pip-version-check -e ".${extra}" --config-settings editable_mode=strict
command -v pyenv >/dev/null 2>&1 && pyenv rehash >/dev/null 2>&1 || true
built=$($PY -c "from clipcurate.queries import fastcount; print(fastcount.BUILD or '')" 2>/dev/null || true)
[ -n "$built" ] || log "warning: the C counter (queries/_fastcount.c) was not built; queries build falls back to pure Python"
log "done: $($PY -m clipcurate --version)${built:+ (C counter: $built)}"
