"""The ingest counters, kept as plain integers on the hot path and turned into Prometheus
families only when scraped: a labelled ``Counter.inc`` (a lock and a value object per call)
and a ``Histogram.observe`` per message were a sixth of the gate's own cost."""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

SINK_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05, 0.25, 1.0)


class IngestMetrics:
    """The ingest metrics, on a registry the caller owns (never the global one)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.connected = Gauge(
            "gpuwarden_ingest_connected",
            "1 while the coordinator's MQTT connection is up and subscribed.",
            registry=registry,
        )
        self.acks = Counter(
            "gpuwarden_ingest_acks_total",
            "Fault events acknowledged back to their agents",
            registry=registry,
        )
        self.boot_conflicts = Counter(
            "gpuwarden_ingest_boot_conflicts_total",
            "Messages from a node's replaced boot that was still talking (forgery or a clone)",
            registry=registry,
        )
        self._messages: dict[tuple[str, str], int] = {}
        self._rejected: dict[str, int] = {}
        self._sink_counts = [0] * (len(SINK_BUCKETS) + 1)
        self._sink_sum = 0.0
        registry.register(self)

    def count(self, kind: str, outcome: str, reason: str | None = None) -> None:
        key = (kind, outcome)
        self._messages[key] = self._messages.get(key, 0) + 1
        if reason is not None:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def sink_took(self, seconds: float) -> None:
        self._sink_counts[bisect.bisect_left(SINK_BUCKETS, seconds)] += 1
        self._sink_sum += seconds

    # --- the registry's side -------------------------------------------------------------------
    def describe(self) -> list[Any]:
        return []  # read at scrape time

    def collect(self) -> Iterator[Any]:
        messages = CounterMetricFamily(
            "gpuwarden_ingest_messages",
            "Agent messages received, by topic kind and outcome "
            "(accepted, rejected, internal_error: accepted but its handling raised).",
            labels=["kind", "outcome"],
        )
        for (kind, outcome), value in sorted(self._messages.items()):
            messages.add_metric([kind, outcome], value)
        rejected = CounterMetricFamily(
            "gpuwarden_ingest_rejected", "Agent messages dropped, by reason.", labels=["reason"]
        )
        for reason, value in sorted(self._rejected.items()):
            rejected.add_metric([reason], value)
        cumulative, buckets = 0, []
        for bound, count in zip((*SINK_BUCKETS, float("inf")), self._sink_counts, strict=True):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        sink = HistogramMetricFamily(
            "gpuwarden_ingest_sink_seconds",
            "Time the sink (the capacity model) took per accepted message.",
            buckets=buckets,
            sum_value=self._sink_sum,
        )
        yield from (messages, rejected, sink)


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)
