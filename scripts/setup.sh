#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian machine: the Debian packages named as arguments
# (installed with apt when root), then .venv with gpuwarden and its test dependencies.
# Usage: scripts/setup.sh [debian-package ...]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing $* with apt"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null
  else
    echo "error: missing Debian packages: $*; install them with: sudo apt-get install -y $*" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "error: python3 cannot create a venv; install it with: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
fi
echo "==> installing gpuwarden and its test dependencies into .venv"
# (the grep hides a local pip-index warning; pipefail still fails the run if pip does)
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
