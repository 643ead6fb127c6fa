"""Does the broker let anyone in? Asked once the coordinator's own connection is up.

The shipped deployment gives every agent a client certificate and an ACL that lets it write
only its own topics. A demo, a first install or a misconfigured broker accept anonymous
clients: then anyone who can reach the broker can forge node state, acknowledgements and
verdicts, and gpuwarden's own defences (the clock-skew bound, boot conflicts, strangers not
counted) are all that stands in the way. That deserves a loud line at start.

The question is asked with one raw MQTT 3.1.1 CONNECT (no user name, no certificate) and its
CONNACK, on a socket this module owns and closes: a full client library would leave its
network loop behind when a TLS broker refuses the handshake.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid

from gpuwarden_common.broker import BrokerSettings

_CONNACK = 0x20
_ACCEPTED = 0


def connect_packet(client_id: str, keepalive_s: int = 10) -> bytes:
    """An MQTT 3.1.1 CONNECT with a clean session and no credentials."""
    ident = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02" + keepalive_s.to_bytes(2, "big")
    payload = len(ident).to_bytes(2, "big") + ident
    body = variable + payload
    assert len(body) < 128  # one byte of remaining length is enough for this packet
    return bytes([0x10, len(body)]) + body


async def accepts_anonymous(broker: BrokerSettings, timeout_s: float = 5.0) -> bool | None:
    """True: a client with no user name, password or certificate was let in; False: it was
    refused (by CONNACK or by the TLS handshake); None: the broker could not be asked."""
    context = None
    if broker.tls:
        context = ssl.create_default_context(cafile=broker.tls_ca)
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(
                broker.host, broker.port, ssl=context,
                server_hostname=broker.host if context else None,
            )  # fmt: skip
            writer.write(connect_packet(f"gpuwarden-probe-{uuid.uuid4().hex[:8]}"))
            await writer.drain()
            answer = await reader.readexactly(4)
    except ssl.SSLError:
        return False  # a certificate was required
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return None
    finally:
        if writer is not None:
            # no goodbye: a TLS close waits for the peer's close_notify, which a broker that
            # refused us may never send
            writer.transport.abort()
    if answer[0] != _CONNACK:
        return None
    return answer[3] == _ACCEPTED
