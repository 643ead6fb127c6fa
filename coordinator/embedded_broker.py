"""An MQTT broker inside the coordinator's process (amqtt, pure Python): the single-machine
default behind ``--embedded-broker`` and the demo. A fleet uses Mosquitto (deploy/)."""

from __future__ import annotations

from typing import Any

import structlog
from amqtt.broker import Broker

log = structlog.get_logger("coordinator.embedded_broker")


def broker_config(host: str, port: int) -> dict[str, Any]:
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


class EmbeddedBroker:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    async def start(self) -> None:
        self._broker = Broker(broker_config(self.host, self.port))
        await self._broker.start()
        log.info("embedded broker listening", host=self.host, port=self.port)

    async def stop(self) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
