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
# a real Slurm (controller, node daemons, client commands, munge) for the Slurm back end's tests
[ -x /usr/sbin/slurmctld ] || need_apt+=(slurmctld)
[ -x /usr/sbin/slurmd ] || need_apt+=(slurmd)
command -v scontrol >/dev/null 2>&1 || need_apt+=(slurm-client)
[ -x /usr/sbin/munged ] || need_apt+=(munge)
# Slurm's accounting (slurmdbd on MariaDB): checks 'gpuwarden policy export --slurm' for real
[ -x /usr/sbin/slurmdbd ] || need_apt+=(slurmdbd)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
scripts/setup.sh "${need_apt[@]}"

echo "==> ruff"
.venv/bin/ruff check agent coordinator gpuwarden_common tests bench
echo "==> mypy --strict"
.venv/bin/mypy
echo "==> pytest"
.venv/bin/python -m pytest "$@"
