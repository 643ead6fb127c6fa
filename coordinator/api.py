"""The coordinator's HTTP face: health, metrics, the read API, operator actions.

Routes are thin: they parse, authorize and call an :class:`ApiBackend` (the daemon), so the
same backend serves the API, the dashboard and the tests.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from coordinator.ledger.report import (
    RangeError,
    Report,
    parse_range,
    to_csv,
    to_json_bytes,
    utc_date,
)

Json = dict[str, Any]


class UnknownNode(LookupError):
    pass


class ApiBackend(Protocol):
    def health(self) -> tuple[bool, Json]: ...
    def cluster(self) -> Json: ...
    def nodes(self) -> list[Json]: ...
    def node(self, name: str) -> Json | None: ...
    async def marks(self, name: str) -> Json | None:
        """What the cluster shows on the node now (None: no such node)."""
        ...

    def audit(self, since: float | None, node: str | None, limit: int) -> list[Json]: ...
    def teams(self) -> list[Json]: ...
    def unassigned(self) -> Json | None:
        """Capacity outside every quota (None: governance off)."""
        ...

    def tasks(self) -> list[Json]: ...
    def priority_classes(self) -> list[Json]: ...
    async def clear(self, node: str, actor: str, reason: str) -> Json:
        """Operator clear: raises UnknownNode."""
        ...

    async def hold(self, node: str, actor: str, reason: str) -> Json: ...
    async def usage_report(self, kind: str, start: float, end: float,
                           team: str | None) -> Report | None:  # fmt: skip
        """A usage report (``summary`` or ``tasks``) over ``[start, end)``; None: no ledger."""
        ...


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# The dashboard loads its own script and stylesheet and talks to its own API, nothing else:
# no inline code to inject into, no framing (clickjacking the operator buttons), no sniffing.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        exc.headers.update(SECURITY_HEADERS)
        raise
    response.headers.update(SECURITY_HEADERS)
    return response


def build_app(
    backend: ApiBackend,
    registry: CollectorRegistry,
    *,
    api_token: str | None,
    static_dir: str | None = None,
) -> web.Application:
    def _float(req: web.Request, key: str) -> float | None:
        raw = req.query.get(key)
        if raw is None or raw == "":
            return None
        try:
            return float(raw)
        except ValueError:
            raise web.HTTPBadRequest(
                text=f"{key}={raw!r}: expected Unix seconds, e.g. {key}=1700000000"
            ) from None

    async def healthz(_: web.Request) -> web.Response:
        ok, body = backend.health()
        return web.json_response(body, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def cluster(_: web.Request) -> web.Response:
        return web.json_response(backend.cluster())

    async def nodes(_: web.Request) -> web.Response:
        return web.json_response({"nodes": backend.nodes()})

    async def node(req: web.Request) -> web.Response:
        found = backend.node(req.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no node {req.match_info['name']!r} is known")
        return web.json_response(found)

    async def marks(req: web.Request) -> web.Response:
        found = await backend.marks(req.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text=f"no node {req.match_info['name']!r} is known")
        return web.json_response(found)

    async def audit(req: web.Request) -> web.Response:
        limit_raw = req.query.get("limit", "200")
        # isdigit() alone takes "²", which int() refuses: ASCII digits only
        if not (limit_raw.isascii() and limit_raw.isdigit()) or not 1 <= int(limit_raw) <= 10_000:
            raise web.HTTPBadRequest(text="limit: expected a whole number from 1 to 10000")
        entries = backend.audit(_float(req, "since"), req.query.get("node"), int(limit_raw))
        return web.json_response({"entries": entries})

    async def teams(_: web.Request) -> web.Response:
        return web.json_response({"teams": backend.teams(), "unassigned": backend.unassigned()})

    async def tasks(_: web.Request) -> web.Response:
        return web.json_response({"tasks": backend.tasks()})

    async def priority_classes(_: web.Request) -> web.Response:
        return web.json_response({"priorityClasses": backend.priority_classes()})

    async def usage(req: web.Request) -> web.Response:
        kind = req.match_info["kind"]
        if kind not in ("summary", "tasks"):
            raise web.HTTPNotFound(text=f"no usage report {kind!r}: summary or tasks")
        fmt = req.query.get("format", "json")
        if fmt not in ("json", "csv"):
            raise web.HTTPBadRequest(text="format: json or csv")
        try:
            start, end = parse_range(req.query.get("from"), req.query.get("to"), time.time())
        except RangeError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        report = await backend.usage_report(kind, start, end, req.query.get("team") or None)
        if report is None:
            raise web.HTTPNotFound(text="this coordinator keeps no usage ledger (--no-ledger)")
        headers = {
            "X-Gpuwarden-Range": f"{utc_date(start)}..{utc_date(end - 1)} UTC",
            "X-Gpuwarden-Missing-Periods": str(len(report.missing)),
        }
        # encoded in a worker thread, in chunks (see report.py): never a stall of the loop
        if fmt == "json":
            body = await asyncio.to_thread(to_json_bytes, report)
            return web.Response(body=body, content_type="application/json", headers=headers)
        name = f"gpuwarden-{kind}-{utc_date(start)}-{utc_date(end - 1)}.csv"
        headers["Content-Disposition"] = f'attachment; filename="{name}"'
        text = await asyncio.to_thread(to_csv, report)
        return web.Response(text=text, content_type="text/csv", headers=headers)

    def operator(action: str) -> Handler:
        async def handler(req: web.Request) -> web.Response:
            if api_token is None:
                raise web.HTTPForbidden(
                    text="operator actions are off: start the coordinator with --api-token-file"
                )
            given = req.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_token}".encode()):
                raise web.HTTPUnauthorized(
                    text="missing or wrong bearer token (Authorization: Bearer <token>)",
                    headers={"WWW-Authenticate": "Bearer"},
                )
            body: object = {}
            if req.can_read_body:
                try:
                    body = await req.json()
                except ValueError:
                    body = None
            if not isinstance(body, dict):
                raise web.HTTPBadRequest(
                    text='body must be a JSON object: {"reason": "...", "actor": "..."}'
                )
            reason = str(body.get("reason", "")) or f"operator {action}"
            actor = str(body.get("actor", "")) or "operator"
            fn = backend.clear if action == "clear" else backend.hold
            try:
                result = await fn(req.match_info["name"], actor, reason)
            except UnknownNode:
                raise web.HTTPNotFound(
                    text=f"no node {req.match_info['name']!r} is known"
                ) from None
            return web.json_response(result)

        return handler

    app = web.Application(middlewares=[security_headers])
    r = app.router
    r.add_get("/healthz", healthz)
    r.add_get("/metrics", metrics)
    r.add_get("/api/v1/cluster", cluster)
    r.add_get("/api/v1/nodes", nodes)
    r.add_get("/api/v1/nodes/{name}", node)
    r.add_get("/api/v1/nodes/{name}/marks", marks)
    r.add_get("/api/v1/audit", audit)
    r.add_get("/api/v1/teams", teams)
    r.add_get("/api/v1/tasks", tasks)
    r.add_get("/api/v1/priority-classes", priority_classes)
    r.add_get("/api/v1/usage/{kind}", usage)
    r.add_post("/api/v1/nodes/{name}/clear", operator("clear"))
    r.add_post("/api/v1/nodes/{name}/hold", operator("hold"))
    if static_dir is not None:

        async def index(_: web.Request) -> web.FileResponse:
            return web.FileResponse(f"{static_dir}/index.html")

        r.add_get("/", index)
        r.add_static("/static/", static_dir)
    return app
