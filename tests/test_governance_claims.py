"""GPUs freed by a preemption are their preemptor's while it waits, and only then: the claim
is spent when the preemptor is admitted and void when it leaves the queue for good."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from coordinator.governance import (
    AdmissionOrder,
    Admit,
    Capacity,
    Decisions,
    Fail,
    GovernanceState,
    Policy,
    Preempt,
    PreemptCause,
    Requeue,
    Task,
    TaskState,
    decide,
    effective_priority,
)
from tests.governance_world import admitted, policy, team

FCFS: Policy = policy(team("a", 8, preempt=True), admission="first-come-first-serve")


def released_for(state: GovernanceState, preemptor: str) -> None:
    """``a/low`` runs on all 8 GPUs, ``preemptor`` preempts it and its pods are gone."""
    low = Task("a", "low", (8,), queued_at=1, priority_class="low")
    state.add(low)
    state.apply(Admit("a/low", "a", 8, 0, "test"), now=1)
    state.start("a/low", now=1)
    state.apply(Preempt("a/low", preemptor, PreemptCause.PRIORITY, 0, 8, 0.0, "test"), now=10)
    state.release("a/low", now=10)


def world_with_a_spent_claim() -> GovernanceState:
    """``a/x`` preempted ``a/low``, was admitted on its GPUs, then a node fault requeued it;
    ``a/low`` still waits. ``a/w`` arrived before ``a/x``, was held back by a backoff of its
    own meanwhile, and is now out of it: both wait for the 8 free GPUs."""
    state = GovernanceState(Capacity.of_count(8))
    state.add(Task("a", "w", (8,), queued_at=0, priority_class="high"))
    state.task("a/w").backoff_until = 50
    state.add(Task("a", "x", (8,), queued_at=5, priority_class="high"))
    released_for(state, "a/x")
    state.apply(Admit("a/x", "a", 8, 0, "test"), now=10)
    state.start("a/x", now=10)
    state.apply(Requeue("a/x", backoff_until=40, counted=True, lost_gpu_s=0, reason="fault"), 20)
    return state


def test_a_claim_is_spent_once_its_preemptor_was_admitted() -> None:
    decisions = decide(world_with_a_spent_claim(), FCFS, now=60)
    assert admitted(decisions) == ["a/w"]


def test_a_claim_is_held_while_its_preemptor_waits() -> None:
    state = GovernanceState(Capacity.of_count(8))
    state.add(Task("a", "w", (8,), queued_at=0, priority_class="high"))
    state.task("a/w").backoff_until = 50
    state.add(Task("a", "x", (8,), queued_at=5, priority_class="high"))
    released_for(state, "a/x")
    assert admitted(decide(state, FCFS, now=60)) == ["a/x"]


def test_a_claim_is_void_once_its_preemptor_failed() -> None:
    state = GovernanceState(Capacity.of_count(8))
    state.add(Task("a", "w", (8,), queued_at=0, priority_class="high"))
    state.task("a/w").backoff_until = 50
    state.add(Task("a", "x", (8,), queued_at=5, priority_class="high"))
    released_for(state, "a/x")
    state.apply(Fail("a/x", "its owner gave up"), now=30)
    state.add(Task("a", "v", (8,), queued_at=3, priority_class="high"))
    assert admitted(decide(state, FCFS, now=60)) == ["a/w"]


def test_a_claim_is_void_once_its_preemptor_is_gone() -> None:
    """A task whose pods never came back is dropped; a new task of the same name is another
    task, with no claim on GPUs freed for the old one."""
    state = GovernanceState(Capacity.of_count(8))
    state.add(Task("a", "w", (8,), queued_at=0, priority_class="high"))
    state.task("a/w").backoff_until = 50
    state.add(Task("a", "x", (8,), queued_at=5, priority_class="high"))
    released_for(state, "a/x")
    state.remove("a/x")
    state.add(Task("a", "x", (8,), queued_at=55, priority_class="high"))
    assert admitted(decide(state, FCFS, now=60)) == ["a/w"]


def test_a_victim_keeps_the_ping_pong_guard_after_its_claim_is_spent() -> None:
    """``a/low`` may not preempt ``a/x``, which preempted it, while ``a/x`` runs, even once
    the GPUs it freed are no longer owed."""
    state = GovernanceState(Capacity.of_count(8))
    state.add(Task("a", "x", (8,), queued_at=5, priority_class="mid"))
    released_for(state, "a/x")
    state.apply(Admit("a/x", "a", 8, 0, "test"), now=10)
    state.start("a/x", now=10)
    state.task("a/low").priority_class = "critical"
    assert decide(state, FCFS, now=60).preempt == ()


# -- no admission overtakes an earlier task of equal standing ------------------------------------

RANKED: Policy = policy(team("a", 8, preempt=True), team("b", 8, preempt=True))
FCFS_TWO: Policy = policy(
    team("a", 8, preempt=True), team("b", 8, preempt=True), admission="first-come-first-serve"
)


@dataclass
class Run:
    """A cluster of 16 GPUs driven through random events, with its own account of which
    preemptor each released victim's GPUs are owed to (independent of the engine's)."""

    rules: Policy
    state: GovernanceState = field(default_factory=lambda: GovernanceState(Capacity.of_count(16)))
    now: float = 100.0
    owed: dict[str, set[str]] = field(default_factory=dict)
    """Preemptor -> its released victims, while it waits and they do."""
    count: int = 0

    def __post_init__(self) -> None:
        """A full cluster, each team at its guarantee, where a high-priority task of team a
        preempted a low-priority one and was admitted on its GPUs."""
        for namespace, gpus, cls in (("a", 8, "low"), ("b", 4, "mid"), ("b", 4, "mid")):
            self.arrive(namespace, gpus, cls, 0)
        self.decide()
        self.arrive("a", 8, "high", 0)
        self.decide()
        self.release()
        self.decide()

    def arrive(self, namespace: str, gpus: int, cls: str, age: float) -> None:
        # A gang's last pod, or a task that kept its place, joins with an early arrival.
        self.count += 1
        queued = max(0.0, self.now - age)
        self.state.add(Task(namespace, f"t{self.count}", (gpus,), queued, priority_class=cls))

    def decide(self) -> None:
        decisions = decide(self.state, self.rules, self.now)
        check_no_overtaking(self, decisions)
        for preempt in decisions.preempt:
            self.state.apply(preempt, self.now)
        for admit in decisions.admit:
            self.state.apply(admit, self.now)
            self.state.start(admit.task, self.now)
            self.owed.pop(admit.task, None)
            for victims in self.owed.values():
                victims.discard(admit.task)

    def release(self) -> None:
        for task in list(self.state.tasks.values()):
            if task.state is TaskState.PREEMPTED:
                self.state.release(task.key, self.now)
                preemptor = self.state.tasks.get(task.preempted_by or "")
                if preemptor is not None and preemptor.state.waiting:
                    self.owed.setdefault(preemptor.key, set()).add(task.key)

    def finish(self, pick: int) -> None:
        running = sorted(k for k, t in self.state.tasks.items() if t.state is TaskState.RUNNING)
        if running:
            self.state.finish(running[pick % len(running)], self.now)

    def fault(self, pick: int, backoff: float) -> None:
        holding = sorted(
            k
            for k, t in self.state.tasks.items()
            if t.state in (TaskState.RUNNING, TaskState.ADMITTED)
        )
        if holding:
            key = holding[pick % len(holding)]
            requeue = Requeue(key, self.now + backoff, counted=True, lost_gpu_s=0, reason="fault")
            self.state.apply(requeue, self.now)

    def drop(self, pick: int) -> None:
        waiting = sorted(k for k, t in self.state.tasks.items() if t.state.waiting)
        if waiting:
            key = waiting[pick % len(waiting)]
            self.state.remove(key)
            self.owed.pop(key, None)
            for victims in self.owed.values():
                victims.discard(key)


def check_no_overtaking(run: Run, decisions: Decisions) -> None:
    """An admitted task never passes an earlier task of its team and effective priority,
    in the queue and out of backoff, except by the documented rules: a task waiting on its
    preemption counts as its team's, and the GPUs its victims freed are owed to it; a
    smaller task goes where a bigger one does not fit (best effort)."""
    admitted_now = {admit.task for admit in decisions.admit}
    ranking = run.rules.admission is AdmissionOrder.TASK_RANKING
    tasks = run.state.tasks

    def place(task: Task) -> tuple[float, ...]:
        priority = -effective_priority(task, run.rules) if ranking else 0
        return (priority, task.queued_at)

    for admit in decisions.admit:
        x = tasks[admit.task]
        for w in tasks.values():
            if w.key in admitted_now or w.namespace != x.namespace or not w.state.waiting:
                continue
            if w.backoff_until is not None and w.backoff_until > run.now:
                continue
            if effective_priority(w, run.rules) != effective_priority(x, run.rules):
                continue
            if (place(w), w.key) > (place(x), x.key):
                continue  # behind it in the queue
            preempting = bool(run.owed.get(x.key)) or any(
                t.state is TaskState.PREEMPTED and t.preempted_by == x.key for t in tasks.values()
            )
            smaller = x.gpus < w.gpus
            assert preempting or smaller, f"{x.key} admitted ahead of {w.key}"


events = st.one_of(
    st.tuples(
        st.just("arrive"),
        st.sampled_from(["a", "b"]),
        st.sampled_from([4, 8]),
        st.sampled_from(["mid", "high"]),
        st.floats(0, 400),
    ),
    st.tuples(st.just("release")),
    st.tuples(st.just("finish"), st.integers(0, 20)),
    st.tuples(st.just("fault"), st.integers(0, 3), st.sampled_from([0.0, 30.0])),
    st.tuples(st.just("drop"), st.integers(0, 20)),
    st.tuples(st.just("tick"), st.sampled_from([5.0, 30.0, 60.0])),
)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([RANKED, FCFS_TWO]), st.lists(events, max_size=40))
@example(  # the case: the preemptor, admitted and requeued, reclaims its old GPUs
    RANKED, [("arrive", "a", 4, "mid", 0.0), ("arrive", "a", 4, "high", 1.0), ("fault", 0, 0.0)]
)
def test_no_admission_overtakes_an_earlier_task_of_equal_standing_but_by_a_rule(
    rules: Policy, steps: list[tuple[Any, ...]]
) -> None:
    run = Run(rules)
    for step in steps:  # a round after every change, as the governors run them
        name, *args = step
        if name == "tick":
            run.now += args[0]
        else:
            getattr(run, name)(*args)
        run.decide()
