"""Task governance's Prometheus metrics on Kubernetes: teams and priority classes read from
the governance state when scraped, plus counters of what the governor did."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily

from coordinator.governance.observe import class_summaries, team_summaries
from coordinator.governance.policy import Policy
from coordinator.governance.tasks import GovernanceState, TaskState


class GovernanceMetrics:
    """Teams and priority classes on the coordinator's registry, read from the state when
    scraped (on the event loop, where the state lives), plus counters of what was done."""

    def __init__(
        self,
        registry: CollectorRegistry | None,
        snapshot: Callable[[], tuple[GovernanceState, Policy, float]],
    ) -> None:
        self._snapshot = snapshot
        self._decisions = Counter(
            "gpuwarden_task_decisions",
            "Governance decisions by kind (admit, preempt, requeue, fail) and team",
            ["decision", "team"],
            registry=registry,
        )
        self._pod_actions = Counter(
            "gpuwarden_pod_actions",
            "Pod operations of task governance by action and outcome",
            ["action", "outcome"],
            registry=registry,
        )
        self._timeouts = Counter(
            "gpuwarden_admission_timeouts",
            "Admitted tasks requeued (or failed) because their pods were not all running in "
            "time, by team",
            ["team"],
            registry=registry,
        )
        self._stopped = Counter(
            "gpuwarden_governance_rounds_stopped",
            "Governance rounds that stopped at preemption.maxVictimsPerRound: the rest of "
            "the queue was decided in the next round",
            registry=registry,
        )
        if registry is not None:
            registry.register(self)

    def decision(self, kind: str, team: str) -> None:
        self._decisions.labels(kind, team).inc()

    def admission_timeout(self, team: str) -> None:
        self._timeouts.labels(team).inc()

    def round_stopped(self) -> None:
        self._stopped.inc()

    def pod_action(self, action: str, ok: bool) -> None:
        self._pod_actions.labels(action, "ok" if ok else "failed").inc()

    def describe(self) -> list[Any]:
        return []  # names are checked at scrape time; nothing to read while registering

    def collect(self) -> Iterator[Any]:
        state, policy, now = self._snapshot()
        team_gpus = GaugeMetricFamily(
            "gpuwarden_team_gpus",
            "GPUs per team: quota, guarantee (quota scaled to healthy capacity), allocated, "
            "in_use, borrowed, lent",
            labels=["team", "kind"],
        )
        pending = GaugeMetricFamily(
            "gpuwarden_team_pending_tasks",
            "Tasks of the team waiting for admission",
            labels=["team"],
        )
        for team in team_summaries(state, policy):
            for kind, value in (
                ("quota", team.quota),
                ("guarantee", team.guarantee),
                ("allocated", team.allocated),
                ("in_use", team.in_use),
                ("borrowed", team.borrowed),
                ("lent", team.lent),
            ):
                team_gpus.add_metric([team.team, kind], value)
            pending.add_metric([team.team], team.pending_tasks)
        class_tasks = GaugeMetricFamily(
            "gpuwarden_class_tasks",
            "Tasks per priority class: running, pending, preempted",
            labels=["priority_class", "state"],
        )
        waits = GaugeMetricFamily(
            "gpuwarden_class_wait_seconds",
            "Wait for admission per priority class (avg, longest)",
            labels=["priority_class", "stat"],
        )
        runs = GaugeMetricFamily(
            "gpuwarden_class_run_seconds",
            "Run time per priority class (avg, longest)",
            labels=["priority_class", "stat"],
        )
        for cls in class_summaries(state, policy, now):
            name = cls.priority_class
            class_tasks.add_metric([name, "running"], cls.running)
            class_tasks.add_metric([name, "pending"], cls.pending)
            class_tasks.add_metric([name, "preempted"], cls.preempted)
            waits.add_metric([name, "avg"], cls.avg_wait_s)
            waits.add_metric([name, "longest"], cls.longest_wait_s)
            runs.add_metric([name, "avg"], cls.avg_run_s)
            runs.add_metric([name, "longest"], cls.longest_run_s)
        by_state = GaugeMetricFamily("gpuwarden_tasks", "Governed tasks by state", labels=["state"])
        counts = dict.fromkeys(TaskState, 0)
        for task in state.tasks.values():
            counts[task.state] += 1
        for task_state, count in counts.items():
            by_state.add_metric([task_state.value], count)
        yield from (team_gpus, pending, class_tasks, waits, runs, by_state)
