"""``gpuwarden policy export --slurm``: the governance policy in Slurm's own terms, an
account per team and a QOS per priority class, with what Slurm cannot do said plainly; and
the script, run against a real slurmdbd (MariaDB behind it), sets exactly that."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coordinator.backends.slurm.policy_export import export_policy
from coordinator.cli import main
from coordinator.governance.policy import parse_policy
from tests.slurm_cluster import missing_binaries as missing_slurm
from tests.slurm_cluster import running_slurm
from tests.slurmdbd import SlurmDbd, running_slurmdbd
from tests.slurmdbd import missing_binaries as missing_dbd

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "policy.yaml"
POLICY = """
defaultPriorityClass: training
priorityClasses:
  - {name: inference, weight: 100}
  - {name: training, weight: 70}
  - {name: batch, weight: 10}
preemption: {defaultGraceSeconds: 90}
teams:
  - {name: research, namespace: research, quota: {gpus: 16}, fairShareWeight: 40,
     preemptLowerPriority: true}
  - {name: vision, namespace: vision, quota: {gpus: 8}, fairShareWeight: 0, lending: lend}
"""


def commands(policy_text: str = POLICY) -> list[str]:
    return [" ".join(argv) for argv in export_policy(parse_policy(policy_text)).commands]


def test_each_team_is_an_account_capped_at_its_quota_with_its_fair_share() -> None:
    assert ("sacctmgr -i modify account where name=research set GrpTRES=gres/gpu=16 "
            "FairShare=40 QOS=inference,training,batch DefaultQOS=training") in commands()


def test_a_fair_share_weight_of_zero_is_the_least_share_slurm_has() -> None:
    assert any("name=vision set GrpTRES=gres/gpu=8 FairShare=1 " in c for c in commands())


def test_each_priority_class_is_a_qos_that_preempts_the_lower_ones_after_the_grace() -> None:
    assert commands()[3:6] == [
        "sacctmgr -i modify qos where name=inference set Priority=100 Preempt=training,batch "
        "PreemptMode=requeue GraceTime=90",
        "sacctmgr -i modify qos where name=training set Priority=70 Preempt=batch "
        "PreemptMode=requeue GraceTime=90",
        "sacctmgr -i modify qos where name=batch set Priority=10 PreemptMode=requeue "
        "GraceTime=90",
    ]


def test_every_qos_exists_before_another_names_it() -> None:
    assert [c.split()[2] for c in commands()[:3]] == ["add", "add", "add"]


def test_what_slurm_cannot_do_is_said_plainly() -> None:
    export = export_policy(parse_policy(POLICY))
    unsupported = " ".join(export.unsupported)
    assert "lending and borrowing" in unsupported
    assert "maxVictimsPerRound 1000" in unsupported
    assert "vision preempt lower classes too" in unsupported
    script = export.script("policy.yaml")
    assert "# No Slurm equivalent (Slurm will NOT do this):" in script
    assert "#   AccountingStorageTRES=gres/gpu" in script


def test_the_cli_prints_a_script_for_the_example_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["policy", "export", "--slurm", str(EXAMPLE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("#!/bin/sh\n")
    assert "set GrpTRES=gres/gpu=192 FairShare=40" in out


def test_the_cli_refuses_an_invalid_policy_saying_how_to_see_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "policy.yaml"
    bad.write_text("teams: [{name: Research}]\n")
    assert main(["policy", "export", "--slurm", str(bad)]) == 1
    assert f"'gpuwarden policy check {bad}' lists every problem" in capsys.readouterr().err


# --- against a real slurmdbd ------------------------------------------------------------------


@pytest.fixture(scope="module")
def accounting(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmDbd]:
    """slurmdbd on MariaDB, and a slurmctld registered with it (that registration is what
    makes gres/gpu a TRES that limits may name)."""
    missing = missing_dbd() + missing_slurm()
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: scripts/test.sh installs them, or "
                    "apt-get install -y mariadb-server slurmdbd slurmctld slurmd slurm-client")
    if os.geteuid() != 0:
        pytest.skip("MariaDB, slurmdbd and slurmctld run as root in this test: run as root")
    work = tmp_path_factory.mktemp("accounting")
    with (
        running_slurmdbd(work / "dbd") as dbd,
        running_slurm(work / "ctld", accounting_port=dbd.dbd_port),
    ):
        deadline = time.monotonic() + 30
        while "gres|gpu" not in dbd.sacctmgr("-n", "-P", "show", "tres",
                                             "format=type,name").stdout:  # fmt: skip
            assert time.monotonic() < deadline, "slurmctld never registered gres/gpu"
            time.sleep(0.1)
        yield dbd


def run_script(dbd: SlurmDbd, script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", "-c", script], env=dbd.env, capture_output=True, text=True,
                          timeout=120, check=False)  # fmt: skip


@pytest.mark.slurm
@pytest.mark.slow
def test_slurm_accepts_the_script_and_holds_the_policy(accounting: SlurmDbd) -> None:
    script = export_policy(parse_policy(EXAMPLE.read_text())).script(str(EXAMPLE))
    first = run_script(accounting, script)
    again = run_script(accounting, script)  # after a policy change, the script runs again
    assocs = accounting.sacctmgr("-n", "-P", "show", "assoc",
                                 "format=account,grptres,fairshare,defaultqos").stdout  # fmt: skip
    qos = accounting.sacctmgr("-n", "-P", "show", "qos",
                              "format=name,priority,preempt,preemptmode,gracetime").stdout

    assert (first.returncode, first.stderr) == (0, "")
    assert (again.returncode, again.stderr) == (0, "")
    assert {line for line in assocs.splitlines() if not line.startswith("root")} == {
        "research|gres/gpu=192|40|training", "inference|gres/gpu=128|1|training",
        "vision|gres/gpu=128|30|training", "nlp|gres/gpu=64|30|training",
    }
    assert "training|70|batch-inference,fine-tuning|requeue|00:02:00" in qos.splitlines()
