#!/usr/bin/env bash
# Prepare this checkout on a fresh Debian machine: the Debian packages named as arguments
# (installed with apt when root), then .venv with gpuwarden and its test dependencies.
# pip runs only when pyproject.toml changed since the last install (the install is editable:
# code changes need none); delete .venv/.installed-pyproject to force it.
# Usage: scripts/setup.sh [debian-package ...]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing with apt: $*"
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

stamp=.venv/.installed-pyproject
wanted="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
  echo "==> .venv is up to date with pyproject.toml; pip not needed (rm $stamp to force)"
  exit 0
fi
# name what pip is about to fetch, before it does
packages="$(python3 - <<'PY'
import re, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = project["dependencies"] + project["optional-dependencies"]["test"]
print(", ".join(re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0] for spec in wanted))
PY
)"
echo "==> installing gpuwarden (editable) into .venv with pip, with: $packages"
# (the grep hides a local pip-index warning; pipefail still fails the run if pip does)
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
echo "$wanted" > "$stamp"
