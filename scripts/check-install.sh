#!/usr/bin/env bash
# The install path a user takes: build the sdist and the wheel, install the wheel into a clean
# venv, run the console scripts from outside the source tree, then the same from the sdist.
# Usage: scripts/check-install.sh   (scripts/test.sh runs it; needs .venv from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "==> building the sdist and the wheel"
.venv/bin/python -m build --sdist --wheel --outdir "$work/dist" . >"$work/build.log" 2>&1 \
  || { cat "$work/build.log"; exit 1; }
sdist=$(ls "$work"/dist/gpuwarden-*.tar.gz)
wheel=$(ls "$work"/dist/gpuwarden-*.whl)

python3 -m venv "$work/venv"
check() {  # the commands the README's install section promises, run from an empty directory
  (
    cd "$work"
    "$work/venv/bin/gpuwarden" --help >/dev/null
    "$work/venv/bin/gpuwarden" coordinator --help | grep -q -- "--max-unhealthy"
    "$work/venv/bin/gpuwarden-agent" --once --gpu-backend sim --sim-gpus 2 --http off \
      --kmsg off --node install-check | grep -q '"node":"install-check"'
  )
}
echo "==> installing $(basename "$wheel") into a clean venv"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check "$wheel" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
check
echo "==> installing $(basename "$sdist") over it"
"$work/venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
  --force-reinstall "$sdist" 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
check
echo "==> install check passed: gpuwarden and gpuwarden-agent work from the wheel and the sdist"
