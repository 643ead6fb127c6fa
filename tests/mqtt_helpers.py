"""A test-side MQTT listener: records what reaches the broker, with arrival times."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiomqtt


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    at: float

    def json(self) -> Any:
        return json.loads(self.payload)


@dataclass
class Listener:
    messages: list[Received] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> list[Received]:
        """Wait until ``predicate(messages)`` is truthy; return the messages then."""

        async def _wait() -> list[Received]:
            async with self.changed:
                await self.changed.wait_for(lambda: bool(predicate(self.messages)))
                return list(self.messages)

        return await asyncio.wait_for(_wait(), timeout)

    def on(self, suffix: str) -> list[Received]:
        return [m for m in self.messages if m.topic.endswith(suffix)]


@contextlib.asynccontextmanager
async def listening(
    port: int, topic: str = "#", *, identifier: str | None = None, persistent: bool = False
) -> AsyncIterator[Listener]:
    """Subscribe (QoS 1) and record. ``persistent`` keeps the session across broker restarts,
    reconnecting as needed, so nothing published while it was away is missed."""
    listener = Listener()

    async def pump() -> None:
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1",
                    port,
                    identifier=identifier,
                    clean_session=False if persistent else None,
                ) as client:
                    await client.subscribe(topic, qos=1)
                    ready.set()
                    async for msg in client.messages:
                        payload = msg.payload if isinstance(msg.payload, bytes) else b""
                        async with listener.changed:
                            listener.messages.append(
                                Received(
                                    str(msg.topic), payload, bool(msg.retain), time.monotonic()
                                )
                            )
                            listener.changed.notify_all()
            except aiomqtt.MqttError:
                if not persistent:
                    raise
                await asyncio.sleep(0.05)

    ready = asyncio.Event()
    task = asyncio.create_task(pump(), name="test-listener")
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await task
