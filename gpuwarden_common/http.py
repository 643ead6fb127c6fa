"""Serving an aiohttp app on a daemon's ``--http`` address."""

from __future__ import annotations

import ssl

from aiohttp import web

from gpuwarden_common.daemon import StartupError
from gpuwarden_common.flags import HttpAddress


async def serve(
    app: web.Application,
    address: HttpAddress,
    flag: str = "--http",
    ssl_context: ssl.SSLContext | None = None,
) -> web.AppRunner:
    """Listen on ``address`` (HTTPS with ``ssl_context``); a port that cannot be had is a
    one-line StartupError."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(
            runner, address.host, address.port, ssl_context=ssl_context
        ).start()
    except OSError as exc:
        await runner.cleanup()
        raise StartupError(
            f"{flag} {address.host}:{address.port}: cannot listen ({exc}); "
            f"pick another port or {flag} off"
        ) from None
    return runner
