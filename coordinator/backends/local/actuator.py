"""The actuator for clusters without Kubernetes (systemd installs, the demo).

It keeps what Kubernetes would keep — which nodes carry which mark, the decision behind it,
and whether gpuwarden "cordoned" them — in a JSON file under ``--state``, so that a restart
sees the same marks, and logs every change. Operators of such clusters read the marks from the
coordinator's API and verdict feed (their own scheduler, e.g. Slurm's drain, acts on them).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import structlog

from coordinator.actuators import ActionResult, MarkFact, NodeFacts, NodeMark

log = structlog.get_logger("coordinator.local")


class LocalActuator:
    name = "local"

    def __init__(self, state_file: Path | None = None) -> None:
        self._file = state_file
        self._marks: dict[str, tuple[NodeMark, MarkFact | None]] = {}
        if state_file is not None and state_file.exists():
            raw: dict[str, Any] = json.loads(state_file.read_text())
            self._marks = {node: _entry(value) for node, value in raw.items()}

    def _save(self) -> None:
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".marks")
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    n: {"mark": m.value, "fact": None if fact is None else asdict(fact)}
                    for n, (m, fact) in sorted(self._marks.items())
                },
                f,
            )
        os.replace(tmp, self._file)

    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        current = self._marks.get(node)
        if current is not None and current[0] == mark:
            return ActionResult(ok=True, changed=False, detail=f"already {mark.value}")
        self._marks[node] = (mark, fact)
        self._save()
        log.warning("node marked", node=node, mark=mark.value, reason=fact.reason,
                    message=fact.message)  # fmt: skip
        return ActionResult(ok=True, changed=True, detail=f"marked {mark.value}")

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        if node not in self._marks:
            return ActionResult(ok=True, changed=False, detail="not marked")
        del self._marks[node]
        self._save()
        log.info("node returned to service", node=node, reason=fact.reason, message=fact.message)
        return ActionResult(ok=True, changed=True, detail="marks removed")

    async def node_facts(self, node: str) -> NodeFacts:
        mark, fact = self._marks.get(node, (None, None))
        # Without a cluster there is no independent Ready signal: None keeps the lifecycle
        # from ever remediating on agent silence alone.
        return NodeFacts(
            name=node,
            ready=None,
            mark=mark,
            cordoned_by_us=mark is not None,
            unschedulable=mark is not None,
            fact=fact,
        )

    async def list_marked(self) -> list[NodeFacts]:
        return [await self.node_facts(n) for n in sorted(self._marks)]

    async def list_nodes(self) -> frozenset[str] | None:
        return None  # no inventory: every node whose agent reports is taken at its word

    async def close(self) -> None:
        return None


def _entry(value: Any) -> tuple[NodeMark, MarkFact | None]:
    if isinstance(value, str):  # the file before marks carried their decision
        return NodeMark(value), None
    fact = value.get("fact")
    return NodeMark(value["mark"]), None if fact is None else MarkFact(**fact)
