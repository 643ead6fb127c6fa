"""The HTTP API answers bad input with 400 and a hint (never 500), and every response carries
the headers that keep the dashboard from being framed, sniffed or injected into."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from prometheus_client import CollectorRegistry

from coordinator.api import Json, UnknownNode, build_app

STATIC_DIR = Path(__file__).parent.parent / "coordinator" / "static"
TOKEN = "s3cret"


class Backend:
    """The smallest :class:`coordinator.api.ApiBackend`: one node, no history."""

    def health(self) -> tuple[bool, Json]:
        return True, {"status": "ok"}

    def cluster(self) -> Json:
        return {}

    def nodes(self) -> list[Json]:
        return [{"name": "gpu-1"}]

    def node(self, name: str) -> Json | None:
        return {"name": name} if name == "gpu-1" else None

    def audit(self, since: float | None, node: str | None, limit: int) -> list[Json]:
        return []

    def teams(self) -> list[Json]:
        return []

    def tasks(self) -> list[Json]:
        return []

    def priority_classes(self) -> list[Json]:
        return []

    async def clear(self, node: str, actor: str, reason: str) -> Json:
        if node != "gpu-1":
            raise UnknownNode(node)
        return {"node": node, "accepted": "clear", "actor": actor, "reason": reason}

    async def hold(self, node: str, actor: str, reason: str) -> Json:
        return await self.clear(node, actor, reason)


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    app = build_app(Backend(), CollectorRegistry(), api_token=TOKEN, static_dir=str(STATIC_DIR))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


async def _get(url: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.text(), response.headers


async def _post(url: str, data: bytes) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(url, data=data, headers=headers) as response,
    ):
        return response.status, await response.text()


async def test_an_audit_limit_that_is_a_digit_but_not_a_number_is_a_400(base_url: str) -> None:
    status, text, _ = await _get(f"{base_url}/api/v1/audit?limit=%C2%B2")  # "²"

    assert status == 400
    assert "1 to 10000" in text


async def test_a_json_array_body_on_an_operator_action_is_a_400(base_url: str) -> None:
    status, text = await _post(f"{base_url}/api/v1/nodes/gpu-1/clear", b'["reason"]')

    assert status == 400
    assert "JSON object" in text


async def test_a_body_that_is_not_json_is_a_400(base_url: str) -> None:
    status, _ = await _post(f"{base_url}/api/v1/nodes/gpu-1/hold", b"reason=because")

    assert status == 400


async def test_an_operator_action_with_a_json_object_still_works(base_url: str) -> None:
    status, text = await _post(f"{base_url}/api/v1/nodes/gpu-1/clear", b'{"reason": "fixed"}')

    assert status == 200
    assert '"reason": "fixed"' in text


@pytest.mark.parametrize("path", ["/", "/api/v1/nodes", "/api/v1/nodes/nope", "/static/app.js"])
async def test_every_response_forbids_framing_sniffing_and_foreign_scripts(
    base_url: str, path: str
) -> None:
    _, _, headers = await _get(base_url + path)

    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["X-Frame-Options"] == "DENY"
