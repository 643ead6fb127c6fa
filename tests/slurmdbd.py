"""A real Slurm accounting database for tests: MariaDB and slurmdbd on free loopback ports
under a scratch directory, so ``sacctmgr`` commands are checked by Slurm itself.

Debian's ``mariadb-server slurmdbd`` (scripts/test.sh installs them) run as root here;
munged is the host's one daemon (tests/slurm_cluster.py starts it when needed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.brokers import free_port
from tests.slurm_cluster import START_S, ensure_munged

BINARIES = ("mariadb-install-db", "mariadbd", "mariadb", "slurmdbd", "sacctmgr")
DB_PASSWORD = "gpuwarden-test"


def _which(name: str) -> str | None:
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"]))


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if _which(b) is None]


def _binary(name: str) -> str:
    found = _which(name)
    if found is None:
        raise RuntimeError(f"{name} is not installed: apt-get install -y mariadb-server slurmdbd")
    return found


@dataclass
class SlurmDbd:
    workdir: Path
    cluster: str = "ci"
    db_port: int = field(default_factory=free_port)
    dbd_port: int = field(default_factory=free_port)
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.workdir / "slurm.conf")}

    def start(self) -> None:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [_binary("mariadb-install-db"), f"--datadir={d}/db", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            check=True, capture_output=True,
        )  # fmt: skip
        socket = d / "mysql.sock"
        self._procs.append(subprocess.Popen(
            [_binary("mariadbd"), "--no-defaults", f"--datadir={d}/db", "--user=root",
             f"--socket={socket}", "--bind-address=127.0.0.1", f"--port={self.db_port}",
             f"--pid-file={d}/mariadb.pid", f"--log-error={d}/mariadb.log"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        grant = (
            f"CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY '{DB_PASSWORD}'; "
            "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        )
        self._until(lambda: subprocess.run(
            [_binary("mariadb"), f"--socket={socket}", "-uroot", "-e", grant],
            capture_output=True, check=False,
        ).returncode == 0, "MariaDB")  # fmt: skip
        (d / "slurmdbd.conf").write_text("\n".join([
            "AuthType=auth/munge", "DbdHost=localhost", f"DbdPort={self.dbd_port}",
            "SlurmUser=root", f"PidFile={d}/slurmdbd.pid", f"LogFile={d}/slurmdbd.log",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1",
            f"StoragePort={self.db_port}", "StorageUser=slurm", f"StoragePass={DB_PASSWORD}",
            "StorageLoc=slurm_acct_db", "",
        ]))  # fmt: skip
        (d / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable password file
        (d / "slurm.conf").write_text("\n".join([
            f"ClusterName={self.cluster}", "SlurmctldHost=localhost",
            "AuthType=auth/munge", "CredType=cred/munge",
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost", f"AccountingStoragePort={self.dbd_port}",
            "AccountingStorageTRES=gres/gpu", "GresTypes=gpu",
            "NodeName=node1 CPUs=1 State=UNKNOWN", "PartitionName=batch Nodes=node1", "",
        ]))  # fmt: skip
        ensure_munged()
        self._procs.append(subprocess.Popen(
            [_binary("slurmdbd"), "-D"], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
        self._until(lambda: self.sacctmgr("-n", "show", "cluster", check=False).returncode == 0,
                    "slurmdbd")  # fmt: skip
        self.sacctmgr("-i", "add", "cluster", self.cluster)

    def _until(self, ready: object, what: str) -> None:
        assert callable(ready)
        deadline = time.monotonic() + START_S
        while not ready():
            if any(p.poll() is not None for p in self._procs) or time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not start; see the logs in {self.workdir}")
            time.sleep(0.1)

    def sacctmgr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([_binary("sacctmgr"), *args], env=self.env, capture_output=True,
                                text=True, timeout=30, check=False)  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"sacctmgr {' '.join(args)}: {result.stderr or result.stdout}")
        return result

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        self._procs.clear()


@contextlib.contextmanager
def running_slurmdbd(workdir: Path) -> Iterator[SlurmDbd]:
    dbd = SlurmDbd(workdir)
    try:
        dbd.start()
        yield dbd
    finally:
        dbd.stop()
