"""Broker connection settings: one parsed form of ``--broker`` and its TLS/auth flags,
turned into ``aiomqtt.Client`` arguments in one place."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit


class BrokerUrlError(ValueError):
    pass


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        username: str | None = None,
        password: str | None = None,
        tls_ca: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> BrokerSettings:
        """``mqtt://[user:pass@]host[:port]`` or ``mqtts://...``; flags win over the URL."""
        parts = urlsplit(url)
        if parts.scheme not in {"mqtt", "mqtts"}:
            raise BrokerUrlError(
                f"broker URL {url!r} must start with mqtt:// or mqtts:// "
                "(for example mqtt://localhost:1883)"
            )
        if not parts.hostname:
            raise BrokerUrlError(f"broker URL {url!r} names no host")
        tls = parts.scheme == "mqtts"
        try:
            port = parts.port or (8883 if tls else 1883)
        except ValueError as exc:
            raise BrokerUrlError(f"broker URL {url!r}: {exc}") from None
        if (tls_cert is None) != (tls_key is None):
            raise BrokerUrlError("--tls-cert and --tls-key go together: give both or neither")
        return cls(
            host=parts.hostname,
            port=port,
            tls=tls or tls_ca is not None,
            username=username or (unquote(parts.username) if parts.username else None),
            password=password or (unquote(parts.password) if parts.password else None),
            tls_ca=tls_ca,
            tls_cert=tls_cert,
            tls_key=tls_key,
        )

    @property
    def display(self) -> str:
        """The URL without secrets, for logs."""
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.tls_ca)
        if self.tls_cert and self.tls_key:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        return ctx

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``aiomqtt.Client`` (hostname, port, auth, TLS)."""
        kwargs: dict[str, Any] = {"hostname": self.host, "port": self.port}
        if self.username is not None:
            kwargs["username"] = self.username
            kwargs["password"] = self.password
        ctx = self.ssl_context()
        if ctx is not None:
            kwargs["tls_context"] = ctx
        return kwargs
