"""The work a simulated node runs out of the box, so the demo shows plausible owners.

Eight GPUs, as on a p5.48xlarge scheduled by Kubernetes (systemd cgroup driver, containerd,
cgroup v2): a training pod on GPUs 0-3, a fine-tuning pod on 4-5, an inference pod on 6 and
someone's notebook on the host on 7; GPUs 0, 3 and 6 also carry a small profiler sidecar
container of their pod. A pod's main container can run several worker processes per GPU
(``workers``, as inference servers do). Nodes with more GPUs repeat the pattern. Pod UIDs
and container ids derive from the node's seed, so a node keeps them across restarts and
nodes differ.
"""

from __future__ import annotations

import hashlib
from typing import Final

from agent.sim.fake_usage import FakeProcess

FAKE_PID_BASE: Final = 4_100_000  # above the usual pid range, so no real process has them
PIDS_PER_GPU: Final = 64  # GPU i's processes are FAKE_PID_BASE + 64 i + k
MAX_WORKERS: Final = PIDS_PER_GPU - 1  # one pid is the sidecar's
GIB: Final = 1024**3
# GPU (mod 8) -> the pod running there and its QoS class (guaranteed pods have no level)
_PODS: Final = {
    0: ("train", ""),
    1: ("train", ""),
    2: ("train", ""),
    3: ("train", ""),
    4: ("finetune", "burstable"),
    5: ("finetune", "burstable"),
    6: ("inference", "burstable"),
}
_HOST_SESSION: Final = "0::/user.slice/user-1000.slice/session-3.scope\n"


def _hex(seed: int | str, text: str, length: int) -> str:
    return hashlib.sha256(f"{seed}:{text}".encode()).hexdigest()[:length]


def pod_uid(seed: int | str, pod: str) -> str:
    h = _hex(seed, f"pod:{pod}", 32)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def container_id(seed: int | str, pod: str, container: str) -> str:
    return _hex(seed, f"container:{pod}/{container}", 64)


def pod_cgroup(seed: int | str, pod: str, qos: str, container: str) -> str:
    """The cgroup v2 line of a container of ``pod``, as the kubelet's systemd driver names it."""
    uid = pod_uid(seed, pod).replace("-", "_")
    qos_slice = f"kubepods-{qos}.slice/kubepods-{qos}-pod{uid}.slice" if qos else (
        f"kubepods-pod{uid}.slice"
    )
    scope = f"cri-containerd-{container_id(seed, pod, container)}.scope"
    return f"0::/kubepods.slice/{qos_slice}/{scope}\n"


def demo_processes(index: int, seed: int | str, workers: int = 1) -> list[FakeProcess]:
    """The processes GPU ``index`` of the node seeded ``seed`` runs at start: ``workers``
    processes (1 to MAX_WORKERS) of the pod's main container, sharing its memory and load."""
    if not 1 <= workers <= MAX_WORKERS:
        raise ValueError(f"workers per GPU: 1 to {MAX_WORKERS}, not {workers}")
    pid = FAKE_PID_BASE + index * PIDS_PER_GPU
    memory = (40 + 3 * index) * GIB
    placed = _PODS.get(index % 8)
    if placed is None:
        return [FakeProcess(pid, memory, cgroup=_HOST_SESSION)]
    pod, qos = placed
    sidecar = index % 3 == 0
    main = pod_cgroup(seed, pod, qos, "main")
    share = (0.97 if sidecar else 1.0) / workers
    processes = [FakeProcess(pid + k, memory // workers, share, main) for k in range(workers)]
    if sidecar:
        profiler = pod_cgroup(seed, pod, qos, "profiler")
        processes.append(FakeProcess(pid + MAX_WORKERS, 2 * GIB, 0.03, profiler))
    return processes
