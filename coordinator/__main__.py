"""``gpuwarden coordinator`` / ``python -m coordinator``: wire the pieces and run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from coordinator.actuators import Actuator
from coordinator.api import build_app
from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.daemon import Coordinator, Leadership
from coordinator.embedded_broker import EmbeddedBroker
from coordinator.local_actuator import LocalActuator
from coordinator.settings import CoordinatorSettings, parse_settings
from gpuwarden_common import logs
from gpuwarden_common.flags import SettingsError

log = structlog.get_logger("coordinator")

SHUTDOWN_DEADLINE_S = 10.0


class StartupError(RuntimeError):
    pass


def static_dir() -> str | None:
    """The packaged dashboard, if this install has it."""
    path = Path(__file__).parent / "static"
    return str(path) if (path / "index.html").is_file() else None


def _kube_parts(settings: CoordinatorSettings) -> tuple[Actuator, Any]:
    # imported here: only the Kubernetes path needs the client
    from coordinator.kube import (  # noqa: PLC0415
        KubeActuator,
        KubeConfigError,
        LeaderElector,
        LeaseSettings,
        kube_client_from,
        leader_identity,
    )

    try:
        client = kube_client_from(settings.kube)
    except KubeConfigError as exc:
        raise StartupError(str(exc)) from None
    actuator = KubeActuator(client, event_namespace=settings.lease_namespace, close_client=True)
    elector = LeaderElector(
        client, leader_identity(settings.identity),
        LeaseSettings(name=settings.lease_name, namespace=settings.lease_namespace),
    )
    return actuator, elector


async def run(settings: CoordinatorSettings, stop: asyncio.Event) -> None:
    try:
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        audit = AuditLog(settings.state_dir / "audit.sqlite3")
    except OSError as exc:
        raise StartupError(
            f"--state {settings.state_dir}: cannot write there ({exc}); pick a writable directory"
        ) from None
    broker = None
    if settings.embedded_broker:
        broker = EmbeddedBroker(settings.broker.host, settings.broker.port)
        try:
            await broker.start()
        except OSError as exc:
            raise StartupError(
                f"--embedded-broker: cannot listen on {settings.broker.host}:"
                f"{settings.broker.port} ({exc}); is another broker running there?"
            ) from None
    elector = None
    actuator: Actuator
    if settings.kube == "off":
        actuator = LocalActuator(settings.state_dir / "marks.json")
    else:
        actuator, elector = _kube_parts(settings)
    leadership: Leadership | None = elector
    coordinator = Coordinator(settings, actuator=actuator, audit=audit, leadership=leadership)
    audit.record(AuditEntry(kind=AuditKind.SYSTEM, actor=settings.identity, action="start",
                            reason="coordinator started",
                            details={"dry_run": settings.dry_run, "kube": settings.kube}))
    runner = None
    if settings.http is not None:
        from aiohttp import web  # noqa: PLC0415

        app = build_app(coordinator, coordinator.registry, api_token=settings.api_token,
                        static_dir=static_dir())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.http.host, settings.http.port).start()
        except OSError as exc:
            raise StartupError(
                f"--http {settings.http.host}:{settings.http.port}: cannot listen ({exc}); "
                "pick another port or --http off"
            ) from None
    log.info("coordinator started", cluster=settings.cluster, broker=settings.broker.display,
             actuator=actuator.name, dry_run=settings.dry_run,
             http=None if settings.http is None else f"{settings.http.host}:{settings.http.port}")
    tasks = [asyncio.create_task(coordinator.run(), name="coordinator")]
    if elector is not None:
        tasks.append(asyncio.create_task(elector.run(), name="leader-election"))
    try:
        waiter = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([*tasks, waiter], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not waiter and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        if elector is not None:  # release the lease so the standby takes over at once
            with contextlib.suppress(Exception):
                await asyncio.wait_for(elector.stop(), SHUTDOWN_DEADLINE_S / 2)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if runner is not None:
            await runner.cleanup()
        await actuator.close()
        if broker is not None:
            await broker.stop()
        audit.record(AuditEntry(kind=AuditKind.SYSTEM, actor=settings.identity, action="stop",
                                reason="coordinator stopped"))
        audit.close()


async def _amain(settings: CoordinatorSettings) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    count = {"n": 0}

    def on_signal() -> None:
        count["n"] += 1
        if count["n"] > 1:
            os._exit(1)
        log.info("stopping (send the signal again to force)")
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await run(settings, stop)
    return 0


def main(argv: Sequence[str] | None = None, prog: str = "gpuwarden coordinator") -> int:
    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv, os.environ, prog)
    except SettingsError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    try:
        return asyncio.run(_amain(settings))
    except StartupError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(prog="python -m coordinator"))
