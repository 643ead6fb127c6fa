"""A real Slurm cluster for tests and benchmarks: one slurmctld and four slurmd, 8 fake GPUs
each, on free loopback ports under a scratch directory (../shared/slurm.md's verified recipe).

Debian's ``slurmctld slurmd slurm-client munge`` (scripts/test.sh installs them) run as root
here. munged is the host's one daemon: started if it is not running, and then left running
(other clusters of the same test run share it). Everything else belongs to the cluster and is
stopped with it: jobs first, then each slurmd, then slurmctld (slurmd ignores SIGTERM while
its controller is down).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.brokers import free_port

NODES = ("node1", "node2", "node3", "node4")
GPUS_PER_NODE = 8
BINARIES = ("slurmctld", "slurmd", "scontrol", "sinfo", "squeue", "scancel", "sbatch", "munge")
# generous bounds on waits: they keep a broken build from hanging, they measure nothing
START_S = 30.0


def missing_binaries() -> list[str]:
    """Slurm and munge programs this machine lacks (sbin included, as root has it)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return [b for b in BINARIES if shutil.which(b, path=path) is None]


def _binary(name: str) -> str:
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which(name, path=path)
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: run scripts/test.sh (it installs Slurm with apt), or "
            "apt-get install -y slurmctld slurmd slurm-client munge"
        )
    return found


@dataclass
class SlurmCluster:
    workdir: Path
    nodes: tuple[str, ...] = NODES
    extra_config: Sequence[str] = ()
    # slurmdbd's port (tests/slurmdbd.py): accounting on, with gres/gpu as a TRES
    accounting_port: int | None = None
    ctld_port: int = field(default_factory=free_port)
    node_ports: dict[str, int] = field(default_factory=dict)
    _ctld: subprocess.Popen[bytes] | None = None
    _slurmd: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.workdir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    # --- configuration --------------------------------------------------------------------
    def write_config(self) -> None:
        d = self.workdir
        for sub in ("state", "log", "dev", *(f"spool-{n}" for n in self.nodes)):
            (d / sub).mkdir(parents=True, exist_ok=True)
        for i in range(GPUS_PER_NODE):  # gres needs File= entries; plain files do
            (d / "dev" / f"nvidia{i}").touch()
        self.node_ports = {n: free_port() for n in self.nodes}
        node_lines = [
            f"NodeName={n} NodeHostname=localhost NodeAddr=127.0.0.1 Port={p} CPUs=4 "
            f"RealMemory=1000 Gres=gpu:{GPUS_PER_NODE} Features=h100 State=UNKNOWN"
            for n, p in self.node_ports.items()
        ]
        names = ",".join(self.nodes)
        self.conf.write_text("\n".join([
            "ClusterName=ci",
            "SlurmctldHost=localhost",
            f"SlurmctldPort={self.ctld_port}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # a requeued job may run again after 10 s, not 120
            "AuthInfo=cred_expire=10",
            f"StateSaveLocation={d}/state",
            f"SlurmdSpoolDir={d}/spool-%n",
            f"SlurmctldPidFile={d}/slurmctld.pid",
            f"SlurmdPidFile={d}/slurmd-%n.pid",
            f"SlurmctldLogFile={d}/log/slurmctld.log",
            f"SlurmdLogFile={d}/log/slurmd-%n.log",
            "MailProg=/bin/true",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            *(["AccountingStorageType=accounting_storage/none"] if self.accounting_port is None
              else ["AccountingStorageType=accounting_storage/slurmdbd",
                    "AccountingStorageHost=localhost",
                    f"AccountingStoragePort={self.accounting_port}",
                    "AccountingStorageTRES=gres/gpu"]),
            "JobCompType=jobcomp/none",
            "MpiDefault=none", "SwitchType=switch/none",
            "SchedulerType=sched/backfill", "SchedulerParameters=sched_interval=2",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
            "SlurmdParameters=config_overrides", "GresTypes=gpu",
            "PreemptType=preempt/partition_prio", "PreemptMode=REQUEUE",
            "JobRequeue=1", "ReturnToService=2", "SlurmdTimeout=30", "InactiveLimit=0",
            "MinJobAge=300", "KillWait=5", "Waittime=0",
            "RebootProgram=/bin/true", "ResumeTimeout=60",
            *self.extra_config,
            *node_lines,
            f"PartitionName=batch Nodes={names} Default=YES MaxTime=INFINITE State=UP "
            "PriorityTier=1",
            "",
        ]))  # fmt: skip
        last = GPUS_PER_NODE - 1
        (d / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={names} Name=gpu File={d}/dev/nvidia[0-{last}]\n"
        )
        (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")

    # --- daemons --------------------------------------------------------------------------
    def start(self) -> None:
        self.write_config()
        ensure_munged()
        self.start_controller()
        for node in self.nodes:
            self._slurmd[node] = subprocess.Popen(
                [_binary("slurmd"), "-D", "-N", node, "-f", str(self.conf)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        self.wait_idle(len(self.nodes))

    def start_controller(self) -> None:
        """Start slurmctld (again, after :meth:`stop_controller`: it keeps its state)."""
        self._ctld = subprocess.Popen(
            [_binary("slurmctld"), "-D", "-f", str(self.conf)],
            env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + START_S
        while "UP" not in self.run("scontrol", "ping", check=False).stdout:
            if self._ctld.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"slurmctld did not come up; see {self.workdir}/log")
            time.sleep(0.05)

    def stop_controller(self) -> None:
        """The controller goes away (its nodes keep running): what an outage looks like."""
        if self._ctld is not None:
            _stop(self._ctld, signal.SIGTERM)
            self._ctld = None

    def stop(self) -> None:
        if self._ctld is not None:
            with contextlib.suppress(Exception):
                self.run("scancel", "--user=root", check=False, timeout=5)
        for proc in self._slurmd.values():
            _stop(proc, signal.SIGTERM)
        self._slurmd.clear()
        self.stop_controller()

    def wait_idle(self, count: int) -> None:
        deadline = time.monotonic() + START_S
        while True:
            out = self.run("sinfo", "-h", "-p", "batch", "-t", "idle", "-o", "%D",
                           check=False).stdout.strip()  # fmt: skip
            if out == str(count):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{count} idle nodes expected, sinfo says {out!r}")
            time.sleep(0.05)

    # --- commands -------------------------------------------------------------------------
    def run(
        self, *argv: str, check: bool = True, timeout: float = 15.0
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [_binary(argv[0]), *argv[1:]], env=self.env, capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip() or result.stdout}")
        return result

    def sinfo_node(self, name: str) -> dict[str, Any]:
        nodes = json.loads(self.run("sinfo", "--json").stdout)["nodes"]
        return next(n for n in nodes if n["name"] == name)

    def jobs(self) -> list[dict[str, Any]]:
        return list(json.loads(self.run("squeue", "--json").stdout)["jobs"])

    def job(self, job_id: int) -> dict[str, Any] | None:
        return next((j for j in self.jobs() if j["job_id"] == job_id), None)

    def submit(self, script: str, *flags: str) -> int:
        path = self.workdir / f"job-{time.monotonic_ns()}.sh"
        path.write_text("#!/bin/bash\n" + script)
        out = self.run("sbatch", "--parsable", f"--chdir={self.workdir}", *flags,
                       str(path)).stdout  # fmt: skip
        return int(out.strip().split(";")[0])

    def drain(self, node: str, reason: str) -> None:
        self.run("scontrol", "update", f"nodename={node}", "state=DRAIN", f"reason={reason}")

    def resume(self, node: str) -> None:
        self.run("scontrol", "update", f"nodename={node}", "state=RESUME")


def ensure_munged() -> None:
    """munged up (``munge -n`` succeeds), starting it as the munge user if needed."""
    if _munge_works():
        return
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        subprocess.run([_binary("mungekey"), "--create"], check=True)
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    subprocess.run(["runuser", "-u", "munge", "--", _binary("munged")], check=True)
    deadline = time.monotonic() + START_S
    while not _munge_works():
        if time.monotonic() > deadline:
            raise RuntimeError("munged did not start (see /var/log/munge/munged.log)")
        time.sleep(0.05)


def _munge_works() -> bool:
    try:
        done = subprocess.run([_binary("munge"), "-n"], capture_output=True, timeout=5,
                              check=False)  # fmt: skip
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@contextlib.contextmanager
def running_slurm(
    workdir: Path, extra_config: Sequence[str] = (), accounting_port: int | None = None
) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(workdir, extra_config=extra_config, accounting_port=accounting_port)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
