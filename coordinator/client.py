"""``gpuwarden status|nodes|teams|tasks``: tables from the coordinator's HTTP API."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table


class ApiUnreachable(RuntimeError):
    pass


def fetch(base_url: str, path: str, timeout_s: float = 5.0) -> Any:
    url = base_url.rstrip("/") + path
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise ApiUnreachable(f"{url} answered {exc.code}: {exc.read().decode()[:200]}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise ApiUnreachable(
            f"cannot reach the coordinator at {base_url} ({exc}); is it running? "
            "Point --api (or GPUWARDEN_API) at its --http address"
        ) from None


def _ago(ts: float | None) -> str:
    if not ts:
        return "-"
    s = max(0.0, time.time() - ts)
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.1f}h"


_STYLE = {"healthy": "green", "degraded": "yellow", "unknown": "magenta", "unhealthy": "red"}


def render_status(console: Console, cluster: dict[str, Any]) -> None:
    cap = cluster.get("capacity", {})
    t = Table(title=f"cluster {cluster.get('cluster', '?')}", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    rows = [
        ("nodes", cluster.get("nodes_total", 0)),
        ("GPUs total", cap.get("gpus_total", 0)),
        ("GPUs healthy", cap.get("gpus_healthy", 0)),
        ("GPUs unhealthy", cap.get("gpus_unhealthy", 0)),
        ("GPUs pending recovery", cap.get("gpus_pending_recovery", 0)),
    ]
    for state, count in sorted(cluster.get("nodes_by_lifecycle", {}).items()):
        rows.append((f"nodes {state}", count))
    if cluster.get("remediation_paused"):
        rows.append(("REMEDIATION PAUSED", cluster.get("paused_reason", "")))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


def render_nodes(console: Console, nodes: list[dict[str, Any]]) -> None:
    t = Table(title=f"{len(nodes)} nodes")
    for col in (
        "node",
        "lifecycle",
        "health",
        "action",
        "GPUs ok/total",
        "type",
        "agent",
        "seen",
        "reason",
    ):
        t.add_column(col)
    for n in nodes:
        health = str(n.get("health", "unknown"))
        # agents supply names, types and reasons: escaped, so they cannot inject markup
        t.add_row(
            escape(n["name"]),
            n.get("lifecycle", ""),
            f"[{_STYLE.get(health, '')}]{escape(health)}[/]",
            n.get("action", ""),
            f"{n.get('gpus_healthy', 0)}/{n.get('gpus_total', 0)}",
            escape(n.get("instance_type") or "-"),
            n.get("agent", ""),
            _ago(n.get("last_seen")),
            escape((n.get("reason") or "")[:60]),
        )
    console.print(t)


def render_rows(console: Console, title: str, rows: list[dict[str, Any]]) -> None:
    """Generic table for teams, tasks and priority classes: columns from the first row."""
    t = Table(title=title)
    if not rows:
        console.print(f"{title}: none")
        return
    cols = [k for k, v in rows[0].items() if not isinstance(v, dict | list)]
    for c in cols:
        t.add_column(c)
    for r in rows:
        t.add_row(*(_cell(r.get(c)) for c in cols))
    console.print(t)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}"
    return escape(str(value))
