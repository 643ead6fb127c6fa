"""The health feed other tools read: one retained verdict per node and ``cluster/health``.

A verdict is published when its node changes; besides that, every verdict and the cluster
summary are republished on every broker (re)connect and every ``refresh_s``, so a broker that
restarted without persistence, or a forged retained message, is corrected within a refresh at
worst. The coordinator also hears its own feed back: a retained verdict that is not what it
last published (a forgery, or a stale one found on connect) is replaced at once, and one for a
node it does not know is deleted. Only the acting leader publishes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog
from prometheus_client import CollectorRegistry, Counter

from coordinator.model import ClusterModel, NodeRecord
from gpuwarden_common.aio import raise_if_cancelled, wait_event
from gpuwarden_common.wire import (
    ClusterHealthMessage,
    Kind,
    NodeVerdictMessage,
    cluster_health_topic,
    encode,
    node_topic,
)

log = structlog.get_logger("coordinator.feed")

CLUSTER_FEED_INTERVAL_S = 5.0
Publish = Callable[[str, bytes], Awaitable[bool]]


def verdict_of(record: NodeRecord, cluster: str, ts: float) -> NodeVerdictMessage:
    return NodeVerdictMessage(
        cluster=cluster, node=record.name, ts=ts,
        lifecycle=record.lifecycle.value, health=record.health, action=record.action,
        reason=record.message or record.reason, schedulable=record.in_service,
        gpus_total=record.gpus_total, gpus_healthy=record.gpus_healthy,
    )  # fmt: skip


class HealthFeed:
    def __init__(
        self,
        cluster: str,
        model: ClusterModel,
        publish: Publish,
        summary: Callable[[], ClusterHealthMessage],
        registry: CollectorRegistry,
        *,
        is_acting: Callable[[], bool],
        on_round: Callable[[], None] = lambda: None,
        refresh_s: float = 60.0,
        clock: Callable[[], float],
    ) -> None:
        self._cluster = cluster
        self._model = model
        self._publish = publish
        self._summary = summary
        self._is_acting = is_acting
        self._on_round = on_round
        self._refresh_s = refresh_s
        self._clock = clock
        self._due: set[str] = set()
        self._delete_due: set[str] = set()
        self._cluster_due = True
        self._wake = asyncio.Event()
        self._published: dict[str, bytes] = {}
        self._node_prefix = f"gpuwarden/v1/{cluster}/nodes/"
        self._cluster_topic = cluster_health_topic(cluster)
        self.corrected = Counter(
            "gpuwarden_feed_corrected_total",
            "Retained feed messages found other than what the coordinator published "
            "(forged, stale after a broker restart), replaced or deleted",
            registry=registry,
        )

    def changed(self, node: str) -> None:
        """Publish ``node``'s verdict soon."""
        self._due.add(node)
        self._wake.set()

    def republish_all(self) -> None:
        """Every verdict and the summary again (a reconnect, or leadership gained)."""
        self._due.update(r.name for r in self._model.nodes())
        self._cluster_due = True
        self._wake.set()

    def heard(self, topic: str, payload: bytes) -> None:
        """A feed message came back from the broker: correct it unless it is ours."""
        if not self._is_acting() or self._published.get(topic) == payload:
            return
        if topic == self._cluster_topic:
            self._cluster_due = True
        elif topic.startswith(self._node_prefix) and topic.endswith(f"/{Kind.VERDICT.value}"):
            node = topic[len(self._node_prefix):].partition("/")[0]
            if self._model.node(node) is not None:
                self._due.add(node)
            elif payload:  # nobody should read a verdict we never gave
                self._delete_due.add(node)
            else:
                return  # a deletion (ours) coming back
        else:
            return
        self.corrected.inc()
        self._wake.set()

    async def run(self) -> None:
        next_cluster = 0.0
        next_refresh = self._clock() + self._refresh_s
        while True:
            raise_if_cancelled()
            now = self._clock()
            if self._is_acting():
                if now >= next_refresh:
                    self.republish_all()
                    next_refresh = now + self._refresh_s
                await self._publish_due()
            if now >= next_cluster or self._cluster_due:
                self._on_round()
                if self._is_acting():
                    self._cluster_due = False
                    await self._send(self._cluster_topic, encode(self._summary()))
                next_cluster = now + CLUSTER_FEED_INTERVAL_S
            self._wake.clear()
            await wait_event(self._wake, max(0.05, next_cluster - self._clock()))

    async def _publish_due(self) -> None:
        deletions, self._delete_due = self._delete_due, set()
        for name in sorted(deletions):
            # an empty retained message deletes the broker's copy
            await self._publish(node_topic(self._cluster, name, Kind.VERDICT), b"")
        due, self._due = self._due, set()
        for name in sorted(due):
            record = self._model.node(name)
            if record is not None:
                payload = encode(verdict_of(record, self._cluster, self._clock()))
                await self._send(node_topic(self._cluster, name, Kind.VERDICT), payload)

    async def _send(self, topic: str, payload: bytes) -> None:
        self._published[topic] = payload
        await self._publish(topic, payload)
