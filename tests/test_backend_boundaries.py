"""Each back end keeps its cluster to itself (DESIGN.md, "Conventions"): only the Slurm back
end runs Slurm's commands, and only the Kubernetes modules import the ``kubernetes`` client.
Read from the source tree, so a new module that breaks the rule fails here."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agent", "coordinator", "gpuwarden_common")
SLURM_PROGRAMS = frozenset({"scontrol", "sinfo", "squeue", "scancel", "sbatch", "srun",
                            "salloc", "sacct", "sacctmgr", "sreport", "sshare"})  # fmt: skip
# calls that start a program (subprocess's, asyncio's, os's, and shutil.which's lookup)
_RUNNERS = frozenset({"run", "Popen", "call", "check_call", "check_output", "getoutput",
                      "getstatusoutput", "create_subprocess_exec", "create_subprocess_shell",
                      "system", "popen", "execv", "execvp", "execvpe", "execl", "execlp",
                      "spawnv", "spawnvp", "which"})  # fmt: skip
SLURM_BACKEND = "coordinator/backends/slurm/"


def sources() -> Iterator[tuple[str, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path))


def slurm_program_runs(tree: ast.Module) -> list[str]:
    """Calls in ``tree`` that start a Slurm program named by a literal."""
    found = []
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call):
            continue
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in _RUNNERS:
            continue
        for arg in call.args:
            for const in ast.walk(arg):
                if isinstance(const, ast.Constant) and isinstance(const.value, str):
                    words = const.value.split()
                    if words and Path(words[0]).name in SLURM_PROGRAMS:
                        found.append(f"line {call.lineno}: {const.value!r}")
    return found


def kubernetes_imports(tree: ast.Module) -> list[str]:
    found = []
    for node in ast.walk(tree):
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import)
            else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0
            else []
        )  # fmt: skip
        found += [f"line {node.lineno}: {n}" for n in names if n.split(".")[0] == "kubernetes"]
    return found


# the agent asks the API server for its own certificate, and only there
AGENT_KUBERNETES_MODULES = frozenset({"agent/kube_csr.py"})


def is_kubernetes_module(path: str) -> bool:
    return path.startswith("coordinator/backends/kubernetes/") or path in AGENT_KUBERNETES_MODULES


def test_only_the_slurm_back_end_runs_slurm_commands() -> None:
    offenders = {
        path: runs for path, tree in sources()
        if not path.startswith(SLURM_BACKEND) and (runs := slurm_program_runs(tree))
    }  # fmt: skip
    assert offenders == {}


def test_only_the_kubernetes_modules_import_the_kubernetes_client() -> None:
    offenders = {
        path: imports for path, tree in sources()
        if not is_kubernetes_module(path) and (imports := kubernetes_imports(tree))
    }  # fmt: skip
    assert offenders == {}


def test_the_slurm_back_end_is_where_slurm_commands_are_run() -> None:
    """The scan sees a real run: the rule above is not vacuous."""
    commands = ast.parse((ROOT / SLURM_BACKEND / "commands.py").read_text())
    calls = [c for c in ast.walk(commands) if isinstance(c, ast.Call)
             and getattr(c.func, "attr", "") == "create_subprocess_exec"]  # fmt: skip
    assert calls


def test_the_scan_finds_a_slurm_command_however_it_is_started() -> None:
    tree = ast.parse(
        "import subprocess, asyncio, os\n"
        "subprocess.run(['scontrol', 'update', 'nodename=n1', 'state=DRAIN'])\n"
        "asyncio.create_subprocess_exec('/usr/bin/sinfo', '--json')\n"
        "os.system('squeue --json > /tmp/q')\n"
        "subprocess.run(['ls', '-l'])\n"
    )
    assert [f.split(":")[0] for f in slurm_program_runs(tree)] == ["line 2", "line 3", "line 4"]


def test_the_kubernetes_back_end_is_where_the_client_is_imported() -> None:
    """The scan sees real imports: the rule above is not vacuous."""
    client = ast.parse((ROOT / "coordinator/backends/kubernetes/client.py").read_text())
    assert kubernetes_imports(client)


def test_no_coordinator_module_outside_the_back_ends_is_named_for_one() -> None:
    flat = sorted(p.name for p in (ROOT / "coordinator").glob("*.py"))
    assert [n for n in flat if n.startswith(("kube", "slurm", "local_actuator"))] == []


def test_the_scan_finds_a_kubernetes_import_in_any_form() -> None:
    tree = ast.parse("import kubernetes.client\nfrom kubernetes import watch\nimport json\n")
    assert len(kubernetes_imports(tree)) == 2
