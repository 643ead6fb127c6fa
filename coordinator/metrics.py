"""The coordinator's own Prometheus metrics (ingest counters live with the ingest gate)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from coordinator.lifecycle import Lifecycle
from coordinator.model import Capacity


class CoordinatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.gpus = Gauge(
            "gpuwarden_cluster_gpus", "GPUs by state (total, healthy, unhealthy, pending_recovery)",
            ["state"], registry=r)
        self.gpus_by_type = Gauge(
            "gpuwarden_cluster_gpus_by_instance_type", "GPUs by instance type and state",
            ["instance_type", "state"], registry=r)
        self.nodes = Gauge("gpuwarden_cluster_nodes", "Nodes by lifecycle state", ["lifecycle"],
                           registry=r)
        self.transitions = Counter(
            "gpuwarden_node_transitions", "Lifecycle transitions carried out",
            ["source", "target", "reason"], registry=r)
        self.actions = Counter(
            "gpuwarden_actions", "Actuator calls by action and outcome", ["action", "outcome"],
            registry=r)
        self.action_latency = Histogram(
            "gpuwarden_action_duration_seconds", "Time an actuator call took", ["action"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=r)
        self.denied = Counter(
            "gpuwarden_remediations_denied", "Remediations the safety gate held back",
            ["reason"], registry=r)
        self.paused = Gauge("gpuwarden_remediation_paused",
                            "1 while new remediation is paused by a safety rule", registry=r)
        self.leader = Gauge("gpuwarden_leader", "1 while this coordinator holds the lease",
                            registry=r)
        self.broker_anonymous = Gauge(
            "gpuwarden_broker_anonymous_access",
            "1 when the broker let a client in with no credentials (anyone can forge node "
            "state), 0 when it refused one",
            registry=r)
        self.marks_pending = Gauge(
            "gpuwarden_marks_pending",
            "Nodes whose marks on the cluster are not yet what the coordinator decided",
            registry=r)

    def observe_capacity(self, cap: Capacity) -> None:
        c = cap.cluster
        for state, value in (("total", c.total), ("healthy", c.healthy),
                             ("unhealthy", c.unhealthy), ("pending_recovery", c.pending_recovery)):
            self.gpus.labels(state).set(value)
        for itype, counts in cap.by_instance_type.items():
            for state, value in (("total", counts.total), ("healthy", counts.healthy),
                                 ("unhealthy", counts.unhealthy),
                                 ("pending_recovery", counts.pending_recovery)):
                self.gpus_by_type.labels(itype, state).set(value)
        for state in Lifecycle:
            self.nodes.labels(state.value).set(cap.nodes_by_lifecycle.get(state, 0))
