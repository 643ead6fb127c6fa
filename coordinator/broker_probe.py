"""Does the broker let anyone in? Asked once the coordinator's own connection is up.

The shipped deployment gives every agent a client certificate and an ACL that lets it write
only its own topics. A demo, a first install or a misconfigured broker accept anonymous
clients: then anyone who can reach the broker can forge node state, acknowledgements and
verdicts, and gpuwarden's own defences (the clock-skew bound, boot conflicts, strangers not
counted) are all that stands in the way. That deserves a loud line at start.
"""

from __future__ import annotations

import dataclasses
import uuid

import aiomqtt

from gpuwarden_common.broker import BrokerSettings


async def accepts_anonymous(broker: BrokerSettings, timeout_s: float = 5.0) -> bool | None:
    """True: a client with no username, password or certificate was let in; False: it was
    refused; None: the broker could not be asked (unreachable, or TLS wanted more)."""
    anonymous = dataclasses.replace(
        broker, username=None, password=None, tls_cert=None, tls_key=None
    )
    try:
        async with aiomqtt.Client(
            **anonymous.client_kwargs(),
            identifier=f"gpuwarden-probe-{uuid.uuid4().hex[:8]}",
            timeout=timeout_s,
        ):
            return True
    except aiomqtt.MqttCodeError:
        return False  # CONNACK said no: not authorised
    except aiomqtt.MqttError:
        return None
