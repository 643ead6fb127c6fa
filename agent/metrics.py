"""The agent's Prometheus metrics, on a registry of its own (tests run several agents)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent.checks.base import CheckResult
from gpuwarden_common.health import Health, health_rank
from gpuwarden_common.wire import GpuState


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        gpu = ["gpu", "uuid"]
        self.gpu_health = Gauge(
            "gpuwarden_gpu_health",
            "GPU health: 0 healthy, 1 degraded, 2 unknown, 3 unhealthy",
            gpu,
            registry=r,
        )
        self.gpu_util = Gauge(
            "gpuwarden_gpu_utilization_ratio", "GPU utilization 0-1", gpu, registry=r
        )
        self.gpu_mem_used = Gauge(
            "gpuwarden_gpu_memory_used_bytes", "GPU memory used", gpu, registry=r
        )
        self.gpu_mem_total = Gauge(
            "gpuwarden_gpu_memory_total_bytes", "GPU memory", gpu, registry=r
        )
        self.gpu_temp = Gauge(
            "gpuwarden_gpu_temperature_celsius", "GPU temperature", gpu, registry=r
        )
        self.gpu_power = Gauge("gpuwarden_gpu_power_watts", "GPU power draw", gpu, registry=r)
        self.gpu_ecc_uncorrected = Gauge(
            "gpuwarden_gpu_ecc_uncorrected_aggregate",
            "Aggregate uncorrected ECC errors",
            gpu,
            registry=r,
        )
        self.gpu_ecc_corrected = Gauge(
            "gpuwarden_gpu_ecc_corrected_aggregate",
            "Aggregate corrected ECC errors",
            gpu,
            registry=r,
        )
        self.node_health = Gauge(
            "gpuwarden_node_health",
            "Node health: 0 healthy, 1 degraded, 2 unknown, 3 unhealthy",
            registry=r,
        )
        self.xid_total = Counter(
            "gpuwarden_xid_events",
            "XID errors seen, by GPU and code",
            ["gpu", "code", "source"],
            registry=r,
        )
        self.check_duration = Histogram(
            "gpuwarden_check_duration_seconds",
            "Time each check took",
            ["check"],
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
            registry=r,
        )
        self.check_failures = Counter(
            "gpuwarden_check_failures",
            "Checks that raised or timed out",
            ["check", "reason"],
            registry=r,
        )
        self.collect_duration = Histogram(
            "gpuwarden_collect_duration_seconds",
            "Time one NVML + host collection took",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )
        self.published = Counter(
            "gpuwarden_agent_published_messages",
            "Messages acknowledged by the broker",
            ["kind"],
            registry=r,
        )
        self.broker_connected = Gauge(
            "gpuwarden_agent_broker_connected", "1 while connected to the broker", registry=r
        )
        self.spool_depth = Gauge(
            "gpuwarden_agent_spool_events",
            "Fault events the coordinator has not acknowledged yet",
            registry=r,
        )
        self.events_acked = Counter(
            "gpuwarden_agent_events_acked",
            "Fault events the coordinator acknowledged (removed from the spool)",
            registry=r,
        )
        self.spool_dropped = Gauge(
            "gpuwarden_agent_spool_dropped_events",
            "Events dropped because the spool was full",
            registry=r,
        )

    def observe_gpus(self, gpus: Iterable[GpuState], node_health: Health) -> None:
        self.node_health.set(health_rank(node_health))
        for g in gpus:
            labels = (str(g.index), g.uuid)
            self.gpu_health.labels(*labels).set(health_rank(g.health))
            for gauge, value in (
                (
                    self.gpu_util,
                    None if g.utilization_gpu_pct is None else g.utilization_gpu_pct / 100,
                ),
                (self.gpu_mem_used, g.memory_used_bytes),
                (self.gpu_mem_total, g.memory_total_bytes),
                (self.gpu_temp, g.temperature_c),
                (self.gpu_power, g.power_draw_w),
                (self.gpu_ecc_uncorrected, g.ecc.aggregate_uncorrected),
                (self.gpu_ecc_corrected, g.ecc.aggregate_corrected),
            ):
                if value is not None:
                    gauge.labels(*labels).set(value)

    def observe_checks(self, results: Iterable[CheckResult]) -> None:
        for res in results:
            self.check_duration.labels(res.check).observe(res.duration_s)
            if res.error is not None:
                reason = "timeout" if "timed out" in res.error.lower() else "error"
                self.check_failures.labels(res.check, reason).inc()
