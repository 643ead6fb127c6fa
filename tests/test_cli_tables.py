from __future__ import annotations

import io

from rich.console import Console

from coordinator.client import render_nodes


def test_agent_supplied_strings_are_printed_as_text_not_markup() -> None:
    out = io.StringIO()
    node = {"name": "[bold]n1", "lifecycle": "healthy", "health": "healthy", "action": "none",
            "gpus_healthy": 8, "gpus_total": 8, "instance_type": "[link=x]t", "agent": "online",
            "last_seen": None, "reason": "[/]broken[red]"}
    render_nodes(Console(file=out, width=200, color_system=None), [node])
    text = out.getvalue()
    assert "[bold]n1" in text and "[link=x]t" in text and "[/]broken[red]" in text
