"""The Slurm back end's node actuator: DESIGN.md's Slurm contract behind the one
:class:`~coordinator.actuators.Actuator` protocol.

Every method reads the node with ``sinfo --json`` (which ignores ``-n``: the node is picked
out here), plans with the pure functions of :mod:`.nodes`, and runs what the plan says with
``scontrol``. A retry of the same decision finds the drain already there (the reason carries
the decision's id) and runs nothing. A command that fails, or a controller that does not
answer, is a not-ok result: the remediator retries it with backoff, and nothing is lost.
The remediator audits every call before and after, and in ``--dry-run`` makes none.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from coordinator.actuators import ActionResult, MarkFact, NodeFacts, NodeMark
from coordinator.backends.slurm.commands import SlurmRunner, SlurmUnavailable
from coordinator.backends.slurm.names import NodeNames
from coordinator.backends.slurm.nodes import (
    MarkPlan,
    RebootMode,
    SlurmNode,
    SlurmReplyError,
    is_ours,
    node_facts,
    parse_sinfo,
    plan_mark_healthy,
    plan_mark_unhealthy,
)

log = structlog.get_logger("coordinator.slurm")


class SlurmActuator:
    name = "slurm"

    def __init__(
        self,
        commands: SlurmRunner,
        *,
        names: NodeNames | None = None,
        reboot: RebootMode = RebootMode.OFF,
    ) -> None:
        self._commands = commands
        self._names = names or NodeNames()
        self._reboot = reboot

    # --- reading ------------------------------------------------------------------------------
    async def read_nodes(self) -> list[SlurmNode]:
        """Every Slurm node. Raises :class:`SlurmUnavailable` when Slurm cannot say."""
        result = await self._commands.run("sinfo", "--json")
        if not result.ok:
            raise SlurmUnavailable(f"sinfo --json: {result.error}")
        try:
            return parse_sinfo(result.stdout)
        except SlurmReplyError as exc:
            raise SlurmUnavailable(str(exc)) from None

    async def _node(self, agent_name: str) -> SlurmNode | None:
        wanted = self._names.slurm(agent_name)
        return next((n for n in await self.read_nodes() if n.name == wanted), None)

    async def node_facts(self, node: str) -> NodeFacts:
        """Raises :class:`SlurmUnavailable` when Slurm cannot be read."""
        return node_facts(await self._node(node), node)

    async def list_node_facts(self) -> list[NodeFacts] | None:
        return [node_facts(n, self._names.agent(n.name)) for n in await self.read_nodes()]

    async def list_marked(self) -> list[NodeFacts]:
        return [
            node_facts(n, self._names.agent(n.name)) for n in await self.read_nodes()
            if is_ours(n)
        ]  # fmt: skip

    async def list_nodes(self) -> frozenset[str] | None:
        return frozenset(self._names.agent(n.name) for n in await self.read_nodes())

    # --- acting -------------------------------------------------------------------------------
    async def mark_unhealthy(self, node: str, mark: NodeMark, fact: MarkFact) -> ActionResult:
        return await self._carry_out(
            node, lambda current: plan_mark_unhealthy(current, mark, fact, self._reboot)
        )

    async def mark_healthy(self, node: str, fact: MarkFact) -> ActionResult:
        return await self._carry_out(node, plan_mark_healthy, missing_ok=True)

    async def _carry_out(
        self, node: str, plan_for: Callable[[SlurmNode], MarkPlan], *, missing_ok: bool = False
    ) -> ActionResult:
        try:
            current = await self._node(node)
        except SlurmUnavailable as exc:
            return ActionResult(ok=False, changed=False, detail=str(exc))
        if current is None:
            slurm_name = self._names.slurm(node)
            return ActionResult(
                ok=missing_ok, changed=False,
                detail=f"Slurm has no node {slurm_name!r}: nothing to resume" if missing_ok
                else f"Slurm has no node {slurm_name!r}; if its NodeName differs from the "
                "agent's name, map them with --slurm-node-map",
            )  # fmt: skip
        plan = plan_for(current)
        for done, args in enumerate(plan.commands):
            try:
                result = await self._commands.run("scontrol", *args)
            except SlurmUnavailable as exc:
                return ActionResult(ok=False, changed=done > 0, detail=str(exc))
            if not result.ok:
                return ActionResult(ok=False, changed=done > 0,
                                    detail=f"scontrol {args[0]}: {result.error}")  # fmt: skip
        if plan.commands:
            log.warning("slurm node changed", node=node, slurm_node=current.name,
                        detail=plan.detail)  # fmt: skip
        return ActionResult(ok=True, changed=bool(plan.commands), detail=plan.detail)

    async def close(self) -> None:
        return None

