"""The actuator for clusters without Kubernetes (systemd installs, the demo).

It keeps what Kubernetes would keep — which nodes carry which mark and whether gpuwarden
"cordoned" them — in a JSON file under ``--state``, so that a restart sees the same marks, and
logs every change. Operators of such clusters read the marks from the coordinator's API and
verdict feed (their own scheduler, e.g. Slurm's drain, acts on them).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import structlog

from coordinator.actuators import ActionResult, NodeFacts, NodeMark

log = structlog.get_logger("coordinator.local")


class LocalActuator:
    name = "local"

    def __init__(self, state_file: Path | None = None) -> None:
        self._file = state_file
        self._marks: dict[str, NodeMark] = {}
        if state_file is not None and state_file.exists():
            raw = json.loads(state_file.read_text())
            self._marks = {node: NodeMark(mark) for node, mark in raw.items()}

    def _save(self) -> None:
        if self._file is None:
            return
        self._file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self._file.parent, prefix=".marks")
        with os.fdopen(fd, "w") as f:
            json.dump({n: m.value for n, m in sorted(self._marks.items())}, f)
        os.replace(tmp, self._file)

    async def mark_unhealthy(
        self, node: str, mark: NodeMark, reason: str, message: str
    ) -> ActionResult:
        if self._marks.get(node) == mark:
            return ActionResult(ok=True, changed=False, detail=f"already {mark.value}")
        self._marks[node] = mark
        self._save()
        log.warning("node marked", node=node, mark=mark.value, reason=reason, message=message)
        return ActionResult(ok=True, changed=True, detail=f"marked {mark.value}")

    async def mark_healthy(self, node: str, reason: str, message: str) -> ActionResult:
        if node not in self._marks:
            return ActionResult(ok=True, changed=False, detail="not marked")
        del self._marks[node]
        self._save()
        log.info("node returned to service", node=node, reason=reason, message=message)
        return ActionResult(ok=True, changed=True, detail="marks removed")

    async def node_facts(self, node: str) -> NodeFacts:
        mark = self._marks.get(node)
        # Without a cluster there is no independent Ready signal: None keeps the lifecycle
        # from ever remediating on agent silence alone.
        return NodeFacts(
            name=node,
            ready=None,
            mark=mark,
            cordoned_by_us=mark is not None,
            unschedulable=mark is not None,
        )

    async def list_marked(self) -> list[NodeFacts]:
        return [await self.node_facts(n) for n in sorted(self._marks)]

    async def close(self) -> None:
        return None
