"""A real PostgreSQL for tests: Debian's server binaries, a cluster in a temp directory, a
free loopback port, stopped after.

``scripts/test.sh`` installs ``postgresql``. The server refuses to run as root, so as root it
runs as the ``postgres`` user the package creates (``runuser``); as anyone else, as them.
One server serves a whole test session; each test gets a database of its own.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.brokers import free_port

SUPERUSER = "gpuwarden"


def server_binaries() -> Path | None:
    """The newest installed PostgreSQL's bin directory (None: not installed)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)  # fmt: skip
    return found[-1].parent if found else None


@dataclass
class PostgresServer:
    bin_dir: Path
    workdir: Path
    port: int
    _names: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def _as_owner(self, *argv: str) -> list[str]:
        if os.geteuid() == 0:
            return ["runuser", "-u", "postgres", "--", *argv]
        return list(argv)

    def start(self) -> None:
        data = self.workdir / "data"
        subprocess.run(
            self._as_owner(str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust",
                           "-U", SUPERUSER, "-E", "UTF8", "--no-sync"),
            check=True, capture_output=True,
        )  # fmt: skip
        subprocess.run(
            self._as_owner(
                str(self.bin_dir / "pg_ctl"), "-D", str(data), "-l", str(self.workdir / "log"),
                "-w", "-t", "60", "start", "-o",
                f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            ),
            check=True, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        subprocess.run(
            self._as_owner(str(self.bin_dir / "pg_ctl"), "-D", str(self.workdir / "data"),
                           "-m", "immediate", "stop"),
            check=False, capture_output=True,
        )  # fmt: skip

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg  # noqa: PLC0415

        name = f"test_{os.getpid()}_{next(self._names)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}".encode())
        return self.url(name)


@contextlib.contextmanager
def running_postgres() -> Iterator[PostgresServer]:
    bin_dir = server_binaries()
    if bin_dir is None:
        raise FileNotFoundError("PostgreSQL is not installed: apt-get install -y postgresql")
    # not under pytest's tmp_path: its parents are private to root, and the server runs as
    # the postgres user, who must reach its own directory
    workdir = Path(tempfile.mkdtemp(prefix="gpuwarden-pg-"))
    if os.geteuid() == 0:
        owner = pwd.getpwnam("postgres")
        os.chown(workdir, owner.pw_uid, owner.pw_gid)
    server = PostgresServer(bin_dir, workdir, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
