"""``/healthz`` and ``/metrics`` for the kubelet's probes and Prometheus."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


@dataclass(frozen=True)
class Liveness:
    """What /healthz reports. ``last_sample_ts`` 0 means no sample yet."""

    last_sample_ts: float
    interval_s: float
    broker_connected: bool
    spooled_events: int


def build_app(registry: CollectorRegistry, liveness: Callable[[], Liveness]) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        now = time.time()
        live = liveness()
        age = now - live.last_sample_ts if live.last_sample_ts else None
        # Alive means the sampling loop turns; a broker outage is reported, not fatal: the
        # agent keeps sampling and spooling, and restarting it would not bring the broker back.
        stuck = age is None or age > 3 * live.interval_s + 30
        body = {
            "status": "stuck" if stuck else "ok",
            "last_sample_age_s": None if age is None else round(age, 3),
            "broker_connected": live.broker_connected,
            "spooled_events": live.spooled_events,
        }
        return web.json_response(body, status=503 if stuck else 200)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app

