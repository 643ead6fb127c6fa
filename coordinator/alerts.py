"""Alerts to people: a Slack-compatible webhook or Alertmanager's v2 API.

:meth:`AlertSender.send` never blocks and never raises: it deduplicates and queues, and a
background task (:meth:`AlertSender.run`) posts with retries. With no URL, alerts are only
logged, so a demo or a first install still says what it would have paged about.
"""

from __future__ import annotations

import asyncio
import datetime
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
import structlog
from prometheus_client import CollectorRegistry, Counter

from gpuwarden_common.health import Severity

log = structlog.get_logger("coordinator.alerts")

Shape = Literal["slack", "alertmanager", "auto"]
_ALERTMANAGER_PATH = "/api/v2/alerts"
_SLACK_COLOURS = {Severity.OK: "good", Severity.WARNING: "warning", Severity.CRITICAL: "danger"}


@dataclass(frozen=True)
class Alert:
    """``key`` identifies the condition (e.g. ``remediation-paused``, ``node-fault/gpu-7``):
    it is what deduplication and Alertmanager's grouping go by. ``resolved`` says the
    condition is over."""

    key: str
    severity: Severity
    summary: str
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    resolved: bool = False


def resolve_shape(url: str, shape: Shape) -> Literal["slack", "alertmanager"]:
    if shape != "auto":
        return shape
    path = urlsplit(url).path.rstrip("/")
    return "alertmanager" if path.endswith(_ALERTMANAGER_PATH) else "slack"


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def slack_payload(alert: Alert, now: float) -> dict[str, Any]:
    state = "RESOLVED" if alert.resolved else alert.severity.value.upper()
    colour = "good" if alert.resolved else _SLACK_COLOURS[alert.severity]
    return {
        "text": f"[{state}] {alert.summary}",
        "attachments": [
            {
                "color": colour,
                "title": alert.summary,
                "text": alert.description,
                "fields": [
                    {"title": name, "value": value, "short": True}
                    for name, value in sorted({"key": alert.key, **alert.labels}.items())
                ],
                "footer": "gpuwarden",
                "ts": int(now),
            }
        ],
    }


def alertmanager_payload(
    alert: Alert, now: float, *, ttl_s: float, generator_url: str
) -> list[dict[str, Any]]:
    """One alert for POST /api/v2/alerts. A firing alert ends after ``ttl_s`` unless sent
    again (Alertmanager's convention, as Prometheus does), so a coordinator that dies does
    not leave it firing forever; a resolved one ends now."""
    return [
        {
            "labels": {
                "alertname": alert.key,
                "severity": alert.severity.value,
                "source": "gpuwarden",
                **alert.labels,
            },
            "annotations": {"summary": alert.summary, "description": alert.description},
            "startsAt": _rfc3339(now),
            "endsAt": _rfc3339(now if alert.resolved else now + ttl_s),
            "generatorURL": generator_url,
        }
    ]


class _RetryableError(Exception):
    """A failure worth another try: the receiver is down or overloaded."""


class _RefusedError(Exception):
    """The receiver said no (4xx): the same request will not fare better."""


class AlertSender:
    """Queue + one background task. Call :meth:`send` from the event loop's thread; run
    :meth:`run` as a task (it owns the HTTP session) and cancel it to stop.

    An alert that repeats the last one sent for its key (firing again, or resolved again)
    within ``dedupe_window_s`` is dropped; a change between firing and resolved always goes
    out. Errors and
    HTTP 5xx/429 are retried with backoff up to ``max_attempts``; other 4xx are not, since
    the same request will not fare better.
    """

    def __init__(
        self,
        url: str | None,
        shape: Shape = "auto",
        *,
        dedupe_window_s: float = 300.0,
        max_attempts: int = 5,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 30.0,
        request_timeout_s: float = 10.0,
        queue_size: int = 1000,
        generator_url: str = "",
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self.url = url
        self.shape = resolve_shape(url, shape) if url else None
        self._dedupe_window_s = dedupe_window_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._timeout = aiohttp.ClientTimeout(total=request_timeout_s)
        self._generator_url = generator_url
        self._clock = clock
        self._queue: asyncio.Queue[tuple[Alert, float]] = asyncio.Queue(queue_size)
        # key -> (resolved, when queued) of the last alert let through for that key
        self._last_sent: dict[str, tuple[bool, float]] = {}
        self._outcomes = (
            None
            if registry is None
            else Counter(
                "gpuwarden_alerts_total",
                "Alerts by outcome (sent, logged, deduplicated, dropped, failed).",
                ["outcome"],
                registry=registry,
            )
        )
        self.counts: dict[str, int] = {}

    def send(self, alert: Alert) -> bool:
        """Queue ``alert`` unless it repeats one sent within the window. Never blocks.
        True when it was queued (or, with no URL, logged)."""
        now = self._clock()
        last = self._last_sent.get(alert.key)
        if last is not None and last[0] == alert.resolved and now - last[1] < self._dedupe_window_s:
            self._count("deduplicated")
            return False
        if self.url is None:
            self._remember(alert, now)
            self._count("logged")
            log.warning(
                "alert (no alert URL configured, logged only)",
                key=alert.key,
                severity=alert.severity.value,
                summary=alert.summary,
                description=alert.description,
                resolved=alert.resolved,
                **alert.labels,
            )
            return True
        try:
            self._queue.put_nowait((alert, now))
        except asyncio.QueueFull:
            self._count("dropped")
            log.error("alert queue full; alert dropped", key=alert.key, summary=alert.summary)
            return False
        self._remember(alert, now)
        return True

    async def run(self) -> None:
        if self.url is None:
            await asyncio.Event().wait()  # nothing to post, ever; wait to be cancelled
        async with aiohttp.ClientSession(timeout=self._timeout) as session:
            while True:
                alert, queued_at = await self._queue.get()
                try:
                    await self._deliver(session, alert, queued_at)
                finally:
                    self._queue.task_done()

    async def drain(self) -> None:
        """Until every queued alert was delivered or given up on (for a graceful stop:
        bound it with ``asyncio.timeout``)."""
        await self._queue.join()

    async def _deliver(self, session: aiohttp.ClientSession, alert: Alert, at: float) -> None:
        assert self.url is not None
        body = self._body(alert, at)
        for attempt in range(1, self._max_attempts + 1):
            try:
                await self._post(session, self.url, body)
            except (_RetryableError, aiohttp.ClientError, TimeoutError) as exc:
                if attempt == self._max_attempts:
                    self._count("failed")
                    self._forget(alert, at)
                    log.error(
                        "alert not delivered; giving up",
                        key=alert.key,
                        attempts=attempt,
                        error=str(exc) or type(exc).__name__,
                    )
                    return
                await asyncio.sleep(self._delay(attempt))
            except _RefusedError as exc:
                self._count("failed")
                self._forget(alert, at)
                log.error("alert refused by the receiver", key=alert.key, error=str(exc))
                return
            else:
                self._count("sent")
                return

    def _body(self, alert: Alert, at: float) -> Any:
        if self.shape == "alertmanager":
            return alertmanager_payload(
                alert, at, ttl_s=3 * self._dedupe_window_s, generator_url=self._generator_url
            )
        return slack_payload(alert, at)

    @staticmethod
    async def _post(session: aiohttp.ClientSession, url: str, body: Any) -> None:
        async with session.post(url, json=body) as response:
            if response.status < 300:
                return
            text = (await response.text())[:300]
            if response.status >= 500 or response.status == 429:
                raise _RetryableError(f"HTTP {response.status}: {text}")
            raise _RefusedError(f"HTTP {response.status}: {text}")

    def _delay(self, attempt: int) -> float:
        ceiling = min(self._backoff_max_s, self._backoff_base_s * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.random() * ceiling / 2

    def _remember(self, alert: Alert, now: float) -> None:
        self._last_sent[alert.key] = (alert.resolved, now)
        # keep the table small without a timer: prune when it grows
        if len(self._last_sent) > 1024:
            horizon = now - self._dedupe_window_s
            self._last_sent = {k: v for k, v in self._last_sent.items() if v[1] >= horizon}

    def _forget(self, alert: Alert, queued_at: float) -> None:
        """An alert that never got through must not hold back the next try for its key."""
        if self._last_sent.get(alert.key) == (alert.resolved, queued_at):
            del self._last_sent[alert.key]

    def _count(self, outcome: str) -> None:
        self.counts[outcome] = self.counts.get(outcome, 0) + 1
        if self._outcomes is not None:
            self._outcomes.labels(outcome=outcome).inc()
