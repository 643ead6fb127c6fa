"""The clusters bench/governance_decision.py decides over: the benchmark's own full cluster,
and layouts built to make the victim search work hard (the issue-9 ones and others).

Not a benchmark itself. Every layout is built from a seed and holds about 10,000 tasks;
``scale`` multiplies the benign one's nodes and tasks.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from coordinator.governance import Capacity, FreeGpus, GovernanceState, Policy, Task, TaskState
from coordinator.governance.policy import PreemptionSettings, policy_from_mapping

GPUS_PER_NODE = 8
DEFAULT_VICTIM_BUDGET = PreemptionSettings().max_victims_per_round
NOW = 1_000_000.0
CLASSES = {"inference": 100, "experiment": 80, "training": 70, "fine-tuning": 60, "batch": 40}


@dataclass
class Layout:
    name: str
    what: str
    policy: Policy
    state: GovernanceState
    nodes: int


def benign(seed: int, scale: int = 1, classes: dict[str, int] | None = None) -> Layout:
    """The benchmark's own cluster (2,000 nodes, 10,000 tasks at scale 1): teams 1-3 run on
    GPUs borrowed from team 0, whose waiting tasks now reclaim them; teams 4-7 are at their
    quota with higher-priority work waiting (4 and 6 preempt lower priority)."""
    nodes, tasks, teams = 2000 * scale, 10_000 * scale, 8
    classes = classes or CLASSES
    policy = _policy(
        [
            {
                "name": f"team-{i}",
                "namespace": f"team-{i}",
                "quota": {"gpus": nodes * GPUS_PER_NODE // teams},
                "lending": "lend-and-borrow" if i % 4 else "lend",
                "borrowLimitPercent": 100,
                "fairShareWeight": 10 + 10 * i,
                "preemptLowerPriority": i % 2 == 0,
            }
            for i in range(teams)
        ],
        classes,
        scale,
        admission="task-ranking",
    )
    held_target = {0: 500, 1: 2500, 2: 2500, 3: 2500, 4: 2000, 5: 2000, 6: 2000, 7: 2000}
    rng = random.Random(seed)
    capacity = {f"node-{i:05d}": GPUS_PER_NODE for i in range(nodes)}
    state = GovernanceState(Capacity.of_nodes(capacity))
    free = FreeGpus(capacity)
    held = dict.fromkeys(held_target, 0)
    names = list(classes)
    for index in range(tasks):
        team = index % teams
        size = rng.choice([1, 1, 1, 2])
        per_pod = rng.choice([1, 1, 2, 2, 4, 8])
        task = Task(
            f"team-{team}",
            f"task-{index:06d}",
            (per_pod,) * size,
            queued_at=rng.uniform(0, NOW),
            priority_class=rng.choice(names),
            size=size,
        )
        task.times_preempted = rng.choice([0, 0, 0, 1, 2])
        if held[team] + task.gpus <= held_target[team] * scale:
            placement = free.place(task.pod_gpus)
            if placement is not None:
                held[team] += task.gpus
                _run(task, placement, rng.uniform(task.queued_at, NOW), rng)
        state.add(task)
    name = "benign" if scale == 1 else f"benign x{scale}"
    what = f"{tasks:,} tasks on {nodes:,} nodes, the benchmark's own full cluster"
    return Layout(name, what, policy, state, nodes)


def unreclaimable(seed: int) -> Layout:
    """Issue 9's layout: every node holds 1 GPU of the lender's own task, which nothing may
    preempt, and 7 borrowed 1-GPU tasks; the lender waits with whole-node tasks. No reclaim
    can ever place one, and before the fix every waiting task tried every borrowed one."""
    nodes = 1000
    rng = random.Random(seed)
    state = _cluster(nodes)
    for i, node in enumerate(_names(nodes)):
        own = Task("lender", f"own-{i}", (1,), queued_at=0.0)
        _run(own, {node: 1}, 0.0, rng)
        state.add(own)
        for j in range(7):
            _running(state, "borrower", f"b-{i}-{j}", (1,), {node: 1}, rng)
    for i in range(2 * nodes):
        state.add(Task("lender", f"whole-{i}", (8,), queued_at=NOW - i))
    return Layout(
        "unreclaimable",
        "1 own + 7 borrowed GPUs per node, whole-node reclaims",
        _lending(nodes),
        state,
        nodes,
    )


def fragmented(
    seed: int,
    shapes: Callable[[random.Random], tuple[int, ...]] | None = None,
    name: str = "fragmented",
    what: str = "",
) -> Layout:
    """1,250 nodes each with 1 free GPU and 7 borrowed 1-GPU tasks; the lender reclaims for
    whole-node tasks. Room is everywhere and nowhere: a walk in victim order reaches
    thousands of candidates before one node has enough."""
    nodes = 1250
    rng = random.Random(seed)
    state = _cluster(nodes)
    for i, node in enumerate(_names(nodes)):
        for j in range(7):
            _running(state, "borrower", f"b-{i}-{j}", (1,), {node: 1}, rng)
    pick = shapes or (lambda _: (8,))
    for i in range(nodes):
        pods = pick(rng)
        state.add(Task("lender", f"gang-{i}", pods, queued_at=NOW - i, size=len(pods)))
    what = what or "1 free + 7 borrowed GPUs per node, whole-node reclaims"
    return Layout(name, what, _lending(nodes), state, nodes)


def many_gangs(seed: int) -> Layout:
    """As fragmented, the lender waiting with gangs: 2-4 whole-node pods, or a 1-GPU driver
    with 1-4 whole-node workers."""

    def gang(rng: random.Random) -> tuple[int, ...]:
        workers = (8,) * rng.randint(1, 4)
        return ((1, *workers)) if rng.random() < 0.5 else (*workers, 8)

    return fragmented(seed, gang, "many gangs", "as fragmented, gangs of 2-5 pods")


def mixed_gangs(seed: int) -> Layout:
    """As fragmented, gangs of 2-4 pods of 8, 4 and 2 GPUs mixed."""

    def gang(rng: random.Random) -> tuple[int, ...]:
        return tuple(
            sorted((rng.choice([8, 4, 2]) for _ in range(rng.randint(2, 4))), reverse=True)
        )

    return fragmented(seed, gang, "mixed gangs", "as fragmented, gangs of 8-, 4- and 2-GPU pods")


def many_levels(seed: int) -> Layout:
    """The benign cluster with 100 priority classes (and aging boosts): more distinct
    levels than tasks of a team per level."""
    classes = {f"class-{weight:03d}": weight for weight in range(1, 101)}
    layout = benign(seed, classes=classes)
    layout.name, layout.what = "many levels", "the benign cluster with 100 priority classes"
    return layout


def scattered_gangs(seed: int) -> Layout:
    """Borrowed tasks are 2-pod gangs spread over two nodes each (victims on several
    nodes), 1 free GPU per node, whole-node reclaims."""
    nodes = 1250
    rng = random.Random(seed)
    state = _cluster(nodes)
    names = _names(nodes)
    free = {node: 7 for node in names}
    index = 0
    while True:
        pair = [node for node in rng.sample(names, 2) if free[node] > 0]
        if len(pair) < 2:
            if sum(free.values()) < 2:
                break
            pair = [node for node in names if free[node] > 0][:2]
            if len(pair) < 2:
                break
        for node in pair:
            free[node] -= 1
        _running(state, "borrower", f"g-{index}", (1, 1), {pair[0]: 1, pair[1]: 1}, rng)
        index += 1
    for i in range(nodes):
        state.add(Task("lender", f"whole-{i}", (8,), queued_at=NOW - i))
    what = "2-pod borrowed gangs across nodes, 1 free GPU per node"
    return Layout("scattered gangs", what, _lending(nodes), state, nodes)


ADVERSARIAL: list[Callable[[int], Layout]] = [
    unreclaimable,
    fragmented,
    many_gangs,
    mixed_gangs,
    many_levels,
    scattered_gangs,
]


# -- building blocks --------------------------------------------------------------------------


def _policy(
    teams: list[dict[str, Any]], classes: dict[str, int], scale: int = 1, **extra: Any
) -> Policy:
    """``scale``: the victim budget grows with the cluster, so a round makes the same
    decisions at 10x as at 1x, ten times over."""
    preemption = {
        "agingBoostPerPreemption": 1,
        "agingMaxBoost": 20,
        "maxVictimsPerRound": DEFAULT_VICTIM_BUDGET * scale,
    }
    return policy_from_mapping(
        {
            "idleCompute": "fair-share",
            "priorityClasses": [{"name": n, "weight": w} for n, w in classes.items()],
            "preemption": preemption,
            "teams": teams,
            **extra,
        }
    )


def without_victim_budget(layout: Layout) -> Layout:
    """The layout with no bound on a round's victims: what the victim search costs when
    a round chooses every victim the queue asks for."""
    settings = layout.policy.preemption.model_copy(update={"max_victims_per_round": 1_000_000})
    return Layout(
        f"{layout.name}, no budget",
        f"{layout.what}, with no victim budget",
        layout.policy.model_copy(update={"preemption": settings}),
        layout.state,
        layout.nodes,
    )


def _lending(nodes: int) -> Policy:
    """A lender owning 7/8 of the cluster, lending it to a borrower of the other 1/8."""
    return _policy(
        [
            {
                "name": "lender",
                "namespace": "lender",
                "quota": {"gpus": nodes * 7},
                "lending": "lend",
            },
            {
                "name": "borrower",
                "namespace": "borrower",
                "quota": {"gpus": nodes},
                "borrowLimitPercent": 500,
            },
        ],
        CLASSES,
    )


def _cluster(nodes: int) -> GovernanceState:
    return GovernanceState(Capacity.of_nodes(dict.fromkeys(_names(nodes), GPUS_PER_NODE)))


def _names(nodes: int) -> list[str]:
    return [f"node-{i:05d}" for i in range(nodes)]


def _run(task: Task, placement: dict[str, int], admitted: float, rng: random.Random) -> None:
    task.state = TaskState.RUNNING
    task.placement = placement
    task.admitted_at = task.started_at = admitted
    if rng.random() < 0.7:
        task.last_checkpoint = rng.uniform(admitted, NOW)


def _running(
    state: GovernanceState,
    namespace: str,
    name: str,
    pods: tuple[int, ...],
    placement: dict[str, int],
    rng: random.Random,
) -> None:
    task = Task(namespace, name, pods, queued_at=rng.uniform(0, NOW / 2), size=len(pods))
    _run(task, placement, rng.uniform(task.queued_at, NOW), rng)
    state.add(task)
