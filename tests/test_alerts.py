"""The alert sender against a real local HTTP server standing in for Slack / Alertmanager."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog.testing
from aiohttp import web
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from coordinator.alerts import Alert, AlertSender, resolve_shape
from gpuwarden_common.health import Severity

WAIT_S = 10.0  # a bound for waits that normally end in milliseconds

PAUSED = Alert(
    key="remediation-paused",
    severity=Severity.CRITICAL,
    summary="Remediation paused: 4 of 20 nodes out",
    description="More than --max-unhealthy nodes would be out; check the broker first.",
    labels={"cluster": "c1"},
)


@dataclass
class Receiver:
    """Answers with the scripted statuses in turn (then 200) and records each body."""

    statuses: list[int] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        self.paths.append(request.path)
        self.arrived.set()
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status, text="ok" if status < 300 else "nope")

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(WAIT_S):
            while len(self.bodies) < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def serving(receiver: Receiver) -> AsyncIterator[TestServer]:
    app = web.Application()
    app.router.add_post("/{tail:.*}", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@contextlib.asynccontextmanager
async def running(sender: AlertSender) -> AsyncIterator[AlertSender]:
    task = asyncio.create_task(sender.run(), name="alerts")
    try:
        yield sender
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def fast_sender(url: str | None, **kw: Any) -> AlertSender:
    return AlertSender(url, backoff_base_s=0.01, backoff_max_s=0.02, **kw)


async def test_slack_shape_posts_text_and_attachment_fields() -> None:
    receiver = Receiver()
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hooks/T0/B0/xyz")))
        async with running(sender):
            sender.send(PAUSED)
            await receiver.wait_for(1)
    body = receiver.bodies[0]
    assert body["text"] == "[CRITICAL] Remediation paused: 4 of 20 nodes out"
    attachment = body["attachments"][0]
    assert attachment["color"] == "danger"
    assert {"title": "cluster", "value": "c1", "short": True} in attachment["fields"]


async def test_alertmanager_shape_posts_a_list_of_alerts_with_labels_and_times() -> None:
    receiver = Receiver()
    async with serving(receiver) as server:
        sender = fast_sender(
            str(server.make_url("/api/v2/alerts")), generator_url="http://coord:8080/"
        )
        async with running(sender):
            sender.send(PAUSED)
            await receiver.wait_for(1)
    [alert] = receiver.bodies[0]
    assert alert["labels"] == {
        "alertname": "remediation-paused",
        "severity": "critical",
        "source": "gpuwarden",
        "cluster": "c1",
    }
    assert alert["annotations"]["summary"] == PAUSED.summary
    assert alert["startsAt"].endswith("Z") and alert["endsAt"] > alert["startsAt"]
    assert alert["generatorURL"] == "http://coord:8080/"


async def test_a_resolved_alert_ends_at_its_start_for_alertmanager() -> None:
    receiver = Receiver()
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/api/v2/alerts")))
        async with running(sender):
            sender.send(Alert(key="k", severity=Severity.OK, summary="over", resolved=True))
            await receiver.wait_for(1)
    [alert] = receiver.bodies[0]
    assert alert["endsAt"] == alert["startsAt"]


@pytest.mark.parametrize(
    ("url", "shape"),
    [
        ("http://am:9093/api/v2/alerts", "alertmanager"),
        ("http://am:9093/api/v2/alerts/", "alertmanager"),
        ("https://hooks.slack.com/services/T/B/x", "slack"),
        ("http://chat.local/api/v2/alerts-bridge", "slack"),
    ],
)
def test_auto_picks_alertmanager_only_for_its_api_path(url: str, shape: str) -> None:
    assert resolve_shape(url, "auto") == shape


def test_an_explicit_shape_wins_over_the_url() -> None:
    assert resolve_shape("http://am:9093/api/v2/alerts", "slack") == "slack"


async def test_a_server_error_is_retried_until_it_succeeds() -> None:
    receiver = Receiver(statuses=[500, 503])
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hook")))
        async with running(sender):
            sender.send(PAUSED)
            await receiver.wait_for(3)
            await sender.drain()
    assert sender.counts == {"sent": 1}


async def test_delivery_gives_up_after_max_attempts() -> None:
    receiver = Receiver(statuses=[500] * 10)
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hook")), max_attempts=3)
        async with running(sender):
            with structlog.testing.capture_logs():
                sender.send(PAUSED)
                await sender.drain()
    assert (len(receiver.bodies), sender.counts) == (3, {"failed": 1})


async def test_a_client_error_is_not_retried() -> None:
    receiver = Receiver(statuses=[400])
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hook")))
        async with running(sender):
            with structlog.testing.capture_logs():
                sender.send(PAUSED)
                await sender.drain()
    assert len(receiver.bodies) == 1


async def test_an_unreachable_receiver_is_retried_then_given_up() -> None:
    async with serving(Receiver()) as server:
        url = str(server.make_url("/hook"))
    sender = fast_sender(url, max_attempts=2, request_timeout_s=2)  # nobody listens now
    async with running(sender):
        with structlog.testing.capture_logs():
            sender.send(PAUSED)
            await sender.drain()
    assert sender.counts == {"failed": 1}


async def test_the_same_alert_key_within_the_window_is_sent_once() -> None:
    receiver = Receiver()
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hook")))
        async with running(sender):
            assert sender.send(PAUSED)
            assert not sender.send(PAUSED)
            await sender.drain()
    assert len(receiver.bodies) == 1


def test_the_same_alert_key_goes_out_again_after_the_window() -> None:
    now = [1000.0]
    sender = fast_sender(None, clock=lambda: now[0], dedupe_window_s=300)
    with structlog.testing.capture_logs():
        sender.send(PAUSED)
        now[0] += 301
        assert sender.send(PAUSED)


def test_resolving_an_alert_is_not_deduplicated_against_its_firing() -> None:
    sender = fast_sender(None)
    with structlog.testing.capture_logs():
        sender.send(PAUSED)
        assert sender.send(
            Alert(key=PAUSED.key, severity=Severity.OK, summary="resumed", resolved=True)
        )


async def test_an_alert_that_was_not_delivered_does_not_block_the_next_try() -> None:
    receiver = Receiver(statuses=[500])
    async with serving(receiver) as server:
        sender = fast_sender(str(server.make_url("/hook")), max_attempts=1)
        async with running(sender):
            with structlog.testing.capture_logs():
                sender.send(PAUSED)
                await sender.drain()
            assert sender.send(PAUSED)
            await sender.drain()
    assert sender.counts == {"failed": 1, "sent": 1}


async def test_an_alert_past_a_full_queue_is_dropped_not_waited_for() -> None:
    sender = fast_sender("http://127.0.0.1:9/hook", queue_size=1)  # no worker running
    with structlog.testing.capture_logs():
        sender.send(PAUSED)
        queued = sender.send(Alert(key="other", severity=Severity.WARNING, summary="x"))
    assert (queued, sender.counts) == (False, {"dropped": 1})


async def test_with_no_url_an_alert_is_logged_and_nothing_is_posted() -> None:
    receiver = Receiver()
    async with serving(receiver):
        sender = fast_sender(None)
        async with running(sender):
            with structlog.testing.capture_logs() as logs:
                assert sender.send(PAUSED)
            await asyncio.sleep(0)
    assert receiver.bodies == []
    assert [entry["key"] for entry in logs] == ["remediation-paused"]


def test_outcomes_are_counted_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    sender = fast_sender(None, registry=registry)
    with structlog.testing.capture_logs():
        sender.send(PAUSED)
        sender.send(PAUSED)
    sample = registry.get_sample_value("gpuwarden_alerts_total", {"outcome": "deduplicated"})
    assert sample == 1
