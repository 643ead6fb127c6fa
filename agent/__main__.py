"""``gpuwarden-agent`` / ``python -m agent``: build settings, pick the GPU backend, run."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog

from agent.daemon import Agent
from agent.host import read_boot_id
from agent.http import Liveness, build_app
from agent.node_identity import IdentityFiles, NodeIdentity
from agent.nvml_collector import NvmlUnavailable
from agent.publisher import Publisher
from agent.settings import AgentSettings, parse_settings
from agent.spool import DirectorySpool, MemorySpool, Spool
from agent.xid_table import XidTableError
from gpuwarden_common import sdnotify
from gpuwarden_common.aio import wait_event
from gpuwarden_common.daemon import StartupError, run_daemon, stop_on_signals
from gpuwarden_common.http import serve
from gpuwarden_common.wire import StateMessage, encode, to_builtins

log = structlog.get_logger("agent")

SHUTDOWN_DEADLINE_S = 10.0


def nvml_backend(settings: AgentSettings) -> tuple[Any, Any]:
    """The module the collector talks to, and a scenario player for ``sim`` (or None)."""
    if settings.gpu_backend == "nvml":
        import pynvml  # noqa: PLC0415 - only the real backend needs the real bindings

        return pynvml, None
    from agent.sim.fake_pynvml import FakeNvml  # noqa: PLC0415
    from agent.sim.scenario import ScenarioError, ScenarioPlayer, load_scenario  # noqa: PLC0415

    try:
        fake = FakeNvml(
            gpus=settings.sim_gpus,
            seed=settings.node,
            processes_per_gpu=settings.sim_processes_per_gpu,
        )
    except ValueError as exc:
        raise StartupError(f"--sim-processes-per-gpu: {exc}") from None
    player = None
    if settings.sim_scenario is not None:
        try:
            player = ScenarioPlayer(fake, load_scenario(settings.sim_scenario))
        except ScenarioError as exc:
            raise StartupError(str(exc)) from None
    return fake, player


async def _amain(settings: AgentSettings) -> int:
    # one agent per process: every line it logs, from any task or thread, names its node
    structlog.contextvars.bind_contextvars(node=settings.node)
    nvml, player = nvml_backend(settings)
    try:
        agent = Agent(settings, nvml, boot_id=read_boot_id())
    except XidTableError as exc:
        raise StartupError(f"--xid-table: {exc}") from None
    try:
        await agent.start_nvml()
    except NvmlUnavailable as exc:
        raise StartupError(str(exc)) from None
    if player is not None:
        player.start()
    if settings.once:
        state, _ = await agent.sample()
        sys.stdout.write(once_text(state, terminal=sys.stdout.isatty()))
        return 0

    stop = asyncio.Event()
    stop_on_signals(stop)
    identity = _node_identity(settings, agent)
    renewal = None
    try:
        if identity is not None:
            # the publisher reads the certificate at every connect: have one first
            await identity.ensure(stop)
            renewal = asyncio.create_task(identity.keep_renewed(stop), name="cert-renewal")
        if not stop.is_set():
            await serve_agent(agent, stop)
    finally:
        if renewal is not None:
            renewal.cancel()
            await asyncio.gather(renewal, return_exceptions=True)
        if player is not None:
            player.stop()
    return 0


def _node_identity(settings: AgentSettings, agent: Agent) -> NodeIdentity | None:
    """``--tls-bootstrap``: the broker certificate from the Kubernetes CSR API."""
    if settings.tls_bootstrap == "off":
        return None
    from agent.kube_csr import KubeCsrClient  # noqa: PLC0415 - only this path needs the client

    assert settings.broker.tls_cert is not None and settings.broker.tls_ca is not None
    try:
        client = KubeCsrClient.from_mode(settings.tls_bootstrap)
    except Exception as exc:  # the kubernetes config loaders raise several kinds
        raise StartupError(f"--tls-bootstrap {settings.tls_bootstrap}: {exc}") from None
    files = IdentityFiles(Path(settings.broker.tls_cert), Path(settings.broker.tls_ca))
    return NodeIdentity(settings.node, files, client, registry=agent.metrics.registry)


def once_text(state: StateMessage, *, terminal: bool) -> str:
    """``--once``: indented JSON for a person at a terminal, one compact line (the wire form)
    for a pipe."""
    if terminal:
        return json.dumps(to_builtins(state), indent=2) + "\n"
    return encode(state).decode() + "\n"


async def serve_agent(agent: Agent, stop: asyncio.Event, *, say_goodbye: bool = True) -> None:
    """Run a started agent (NVML up) until ``stop``: publisher, watchers, HTTP, sample loop.

    ``say_goodbye=False`` leaves without the offline status, as a crashed or cut-off agent
    would (the demo uses it to show a node going silent). Binds ``node`` to the calling task's
    log context: run it in a task of its own when several agents share a process.
    """
    settings = agent.settings
    structlog.contextvars.bind_contextvars(node=settings.node)
    spool: Spool = DirectorySpool(settings.spool_dir) if settings.spool_dir else MemorySpool()
    publisher = Publisher(
        settings.broker,
        agent.stamp,
        spool,
        ack_timeout_s=settings.event_ack_timeout_s,
        on_published=lambda kind: agent.metrics.published.labels(kind.value).inc(),
        on_acked=agent.metrics.events_acked.inc,
        on_connection=lambda up: agent.metrics.broker_connected.set(1 if up else 0),
    )
    agent.publisher = publisher
    agent.start_watchers()
    runner = None
    try:
        if settings.http is not None:
            app = build_app(
                agent.metrics.registry,
                lambda: Liveness(
                    agent.last_sample_ts,
                    settings.interval_s,
                    publisher.connected,
                    publisher.spool_depth(),
                ),
            )
            runner = await serve(app, settings.http)
        log.info(
            "agent started",
            node=settings.node,
            cluster=settings.cluster,
            broker=settings.broker.display,
            gpus=len(agent.collector.identities),
            backend=settings.gpu_backend,
        )
        sdnotify.ready()
        sdnotify.status(
            f"{len(agent.collector.identities)} GPUs, broker {settings.broker.display}"
        )
        async with asyncio.TaskGroup() as tg:
            tg.create_task(agent.run(stop), name="sample-loop")
            pub_task = tg.create_task(publisher.run(), name="publisher")
            # systemd's watchdog is fed only while samples keep coming (the /healthz rule),
            # so an agent stuck in the driver gets restarted
            watchdog = tg.create_task(
                sdnotify.run_watchdog(lambda: _alive(agent)), name="sd-watchdog"
            )
            await stop.wait()
            sdnotify.stopping()
            if say_goodbye:
                # give the coordinator a moment to acknowledge what is spooled (a disk spool
                # keeps the rest for the next start), then always say offline
                if publisher.connected and publisher.spool_depth() > 0:
                    drained = await wait_event(publisher.drained, SHUTDOWN_DEADLINE_S / 2)
                    if not drained:
                        log.warning("stopping with events not yet acknowledged",
                                    spooled=publisher.spool_depth(),
                                    kept=settings.spool_dir is not None)  # fmt: skip
                await publisher.say_offline()
            pub_task.cancel()
            watchdog.cancel()
    finally:
        agent.stop_watchers()
        if runner is not None:
            await runner.cleanup()
        await asyncio.to_thread(agent.collector.shutdown)


def _alive(agent: Agent) -> bool:
    age = time.time() - agent.last_sample_ts
    return agent.last_sample_ts > 0 and age < 3 * agent.settings.interval_s + 30


def main(argv: Sequence[str] | None = None) -> int:
    return run_daemon(
        "gpuwarden-agent",
        lambda: parse_settings(sys.argv[1:] if argv is None else argv, os.environ),
        _amain,
    )


if __name__ == "__main__":
    sys.exit(main())
