#!/usr/bin/env bash
# The whole test suite on a fresh Debian machine: system packages, a venv, lint, types, tests.
# Usage: scripts/test.sh [pytest args...]   (what `make test` and .ci/run call)
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
[ -x /usr/bin/chromium ] || need_apt+=(chromium)  # the dashboard's browser test
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)  # certificates for the broker TLS test
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)  # verifies the units
# kubectl kustomize renders every overlay of deploy/kubernetes (components need kubectl 1.21+;
# Debian 12's kubernetes-client is 1.20, so a newer kubectl already on PATH is kept)
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)

# a real Slurm (controller, node daemons, client commands, munge) for the Slurm back end's tests
[ -x /usr/sbin/slurmctld ] || need_apt+=(slurmctld)
[ -x /usr/sbin/slurmd ] || need_apt+=(slurmd)
command -v scontrol >/dev/null 2>&1 || need_apt+=(slurm-client)
[ -x /usr/sbin/munged ] || need_apt+=(munge)
# Slurm's accounting (slurmdbd on MariaDB): checks 'gpuwarden policy export --slurm' for real
[ -x /usr/sbin/slurmdbd ] || need_apt+=(slurmdbd)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)

# say the plan first: what gets installed where, then what runs
if [ ${#need_apt[@]} -gt 0 ]; then
  apt_plan="apt (as root): ${need_apt[*]}"
else
  apt_plan="apt: nothing (mosquitto, chromium, openssl, systemd and kubectl are here)"
fi
echo "==> make test will install: $apt_plan; pip: gpuwarden and its test tools into .venv" \
  "(only when pyproject.toml changed); then run ruff, mypy --strict and pytest"
scripts/setup.sh "${need_apt[@]}"

echo "==> ruff"
.venv/bin/ruff check agent coordinator gpuwarden_common tests bench
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> install from the built wheel and sdist"
scripts/check-install.sh
echo "==> pytest"
.venv/bin/python -m pytest "$@"
