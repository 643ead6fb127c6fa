#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: system packages, a venv, lint, types, tests.
# Usage: scripts/test.sh [pytest args...]   (what `make test` and .ci/run call)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the dashboard's browser test
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "==> installing ${need_apt[*]} with apt"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need_apt[@]}" >/dev/null
  else
    echo "error: missing ${need_apt[*]}; install with: sudo apt-get install -y ${need_apt[*]}" >&2
    exit 1
  fi
fi

if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv"
  python3 -m venv .venv
fi
echo "==> installing gpuwarden and its test dependencies into .venv"
# (the grep hides a local pip-index warning; pipefail still fails the run if pip does)
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }

echo "==> ruff"
.venv/bin/ruff check agent coordinator gpuwarden_common tests bench
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest "$@"
