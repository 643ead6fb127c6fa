"""Slurm nodes as gpuwarden reads and marks them. Pure: no command runs here.

A node's drain *reason* is gpuwarden's whole record on a Slurm cluster (Slurm keeps nothing
else per node that an operator can see and a restarted coordinator can read back)::

    gpuwarden: XID 79 on GPU 2 (pending-reboot) [fact:3f2a9c1b7d6e5a40@1796228541.250]

- the ``gpuwarden:`` prefix says the drain is ours: only such drains are ever resumed;
- the text names the fault (``MarkFact.fault``, else the decision's message);
- the lifecycle in parentheses is the mark (pending-replacement is a DRAIN too: see
  docs/operations.md, "Slurm");
- ``[fact:ID@TIME]`` is the decision behind the drain, so a retry of the same decision finds
  nothing to do and a restart can tell which decision is newer (coordinator.restore).

Slurm appends to a reason it owns (``: reboot issued``, ``: reboot complete``): whatever follows
the fact token is kept as ``suffix`` and never breaks recognition.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from coordinator.actuators import MarkFact, NodeFacts, NodeMark

REASON_PREFIX = "gpuwarden:"
# the lifecycle word each mark is written with (the state names of coordinator.lifecycle)
MARK_WORDS: dict[NodeMark, str] = {
    NodeMark.UNSCHEDULABLE: "unschedulable",
    NodeMark.PENDING_REBOOT: "pending-reboot",
    NodeMark.PENDING_REPLACEMENT: "pending-replacement",
}
_WORD_MARKS = {word: mark for mark, word in MARK_WORDS.items()}
_REASON = re.compile(
    r"^gpuwarden: (?P<text>.*) \((?P<word>" + "|".join(MARK_WORDS.values()) + r")\) "
    r"\[fact:(?P<id>[0-9A-Za-z_.-]+)@(?P<at>\d+(?:\.\d+)?)\](?P<suffix>.*)$",
    re.DOTALL,
)
# a reason is shown whole by `sinfo -R` and `scontrol show node`: keep it to one short line
_TEXT_LIMIT = 160
# base states in which the node runs nothing new whatever its flags
_OUT_STATES = frozenset({"down", "fail", "failing", "future"})
# states in which slurmctld cannot reach the node: Kubernetes' Ready=False
_UNREACHABLE_STATES = frozenset({"down"})
_REBOOT_FLAGS = frozenset({"REBOOT_REQUESTED", "REBOOT_ISSUED"})
_HOLD_FLAGS = frozenset({"DRAIN", "FAIL"})
_FAIL_STATES = frozenset({"fail", "failing"})


class SlurmReplyError(ValueError):
    """A Slurm command answered, but not with what it should (errors in its JSON, or no
    JSON at all): the controller is down or refusing."""


class RebootMode(StrEnum):
    """``--slurm-reboot``: whether a pending-reboot mark also asks Slurm to reboot the node,
    and the state Slurm leaves it in afterwards."""

    OFF = "off"
    # back DOWN after the reboot: it returns only when gpuwarden has seen it healthy
    DOWN = "down"
    # back in service at once, before its agent has reported (DESIGN.md's original contract)
    RESUME = "resume"


@dataclass(frozen=True)
class SlurmNode:
    """One node of ``sinfo --json``: ``state`` is the base state in lower case (idle, mixed,
    allocated, down...), ``flags`` the state flags (DRAIN, NOT_RESPONDING, REBOOT_ISSUED...),
    ``gpus`` the GPUs its GRES configures (None when it names none)."""

    name: str
    state: str
    flags: frozenset[str]
    reason: str
    gpus: int | None = None

    @property
    def drained(self) -> bool:
        """Takes no new work (drained, draining, down or failed)."""
        return self.held or self.state in _OUT_STATES

    @property
    def held(self) -> bool:
        """Someone decided it takes no work (a DRAIN or FAIL): unlike DOWN without a drain,
        which Slurm itself lifts when the node registers again (ReturnToService)."""
        return bool(self.flags & _HOLD_FLAGS) or self.state in _FAIL_STATES

    @property
    def reachable(self) -> bool:
        return self.state not in _UNREACHABLE_STATES and "NOT_RESPONDING" not in self.flags

    @property
    def reboot_pending(self) -> bool:
        return bool(self.flags & _REBOOT_FLAGS)


@dataclass(frozen=True)
class OurReason:
    """A drain reason gpuwarden wrote, read back."""

    text: str
    mark: NodeMark
    fact_id: str
    at: float
    suffix: str = ""

    def fact(self) -> MarkFact:
        """The decision the drain records. Its Kubernetes Event reason is not kept on Slurm
        (there are no Events); the text is the fault as the reason shows it."""
        return MarkFact(reason="NodeMarkedForRecovery", message=self.text, id=self.fact_id,
                        at=self.at, fault=self.text)  # fmt: skip


def drain_reason(mark: NodeMark, fact: MarkFact) -> str:
    """The reason gpuwarden drains a node with for ``fact``."""
    text = " ".join((fact.fault or fact.message or fact.reason).split())  # one line
    if len(text) > _TEXT_LIMIT:
        text = text[: _TEXT_LIMIT - 3] + "..."
    return f"{REASON_PREFIX} {text} ({MARK_WORDS[mark]}) [fact:{fact.id}@{fact.at:.3f}]"


def parse_reason(reason: str) -> OurReason | None:
    """gpuwarden's record in a drain reason; None for anyone else's (an administrator's)."""
    found = _REASON.match(reason.strip())
    if found is None:
        return None
    return OurReason(
        text=found["text"], mark=_WORD_MARKS[found["word"]], fact_id=found["id"],
        at=float(found["at"]), suffix=found["suffix"].strip(),
    )  # fmt: skip


def is_ours(node: SlurmNode) -> bool:
    """Drained by gpuwarden: the only drains it may lift. A bare ``gpuwarden:`` prefix (a
    record Slurm rewrote) counts, so such a node is resumed rather than stuck forever."""
    return node.drained and node.reason.startswith(REASON_PREFIX)


def gres_gpus(gres: str) -> int | None:
    """GPUs in a GRES string: ``gpu:8``, ``gpu:h100:8(S:0-1)``, ``gpu:a100:4,gpu:h100:4``;
    None when it configures no GPU."""
    total = None
    for entry in re.sub(r"\([^)]*\)", "", gres).split(","):
        parts = entry.strip().split(":")
        if parts[0] != "gpu":
            continue
        count = 1 if len(parts) == 1 or not parts[-1].isdigit() else int(parts[-1])
        total = (total or 0) + count
    return total


def _json(text: str, command: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise SlurmReplyError(f"{command}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise SlurmReplyError(f"{command}: expected a JSON object")
    errors = data.get("errors") or []
    if errors:
        # e.g. {"error": "Unspecified error", "errno": -1, ...} when the controller is down
        described = "; ".join(
            str(e.get("description") or e.get("error") or e) if isinstance(e, dict) else str(e)
            for e in errors
        )
        raise SlurmReplyError(f"{command}: {described}")
    return data


def parse_sinfo(text: str) -> list[SlurmNode]:
    """``sinfo --json`` (Slurm 22.05's v0.0.38 layout). Raises :class:`SlurmReplyError`."""
    data = _json(text, "sinfo --json")
    nodes: list[SlurmNode] = []
    for raw in data.get("nodes") or []:
        nodes.append(
            SlurmNode(
                name=str(raw["name"]),
                state=str(raw.get("state") or "unknown").lower(),
                flags=frozenset(str(f).upper() for f in raw.get("state_flags") or []),
                reason=str(raw.get("reason") or ""),
                gpus=gres_gpus(str(raw.get("gres") or "")),
            )
        )
    return nodes


def node_facts(node: SlurmNode | None, name: str) -> NodeFacts:
    """What Slurm says about agent node ``name`` (``node``: its Slurm node, None when Slurm
    knows none). DOWN or NOT_RESPONDING is Kubernetes' Ready=False; the lifecycle acts on
    it only for a node whose agent is silent too (silence alone never drains)."""
    if node is None:
        return NodeFacts(name=name, exists=False)
    ours = parse_reason(node.reason) if is_ours(node) else None
    return NodeFacts(
        name=name,
        exists=True,
        ready=None if node.state == "unknown" else node.reachable,
        mark=None if ours is None else ours.mark,
        cordoned_by_us=ours is not None,
        unschedulable=node.drained,
        fact=None if ours is None else ours.fact(),
        gpus=node.gpus,
    )


# --- planning the commands --------------------------------------------------------------------


@dataclass(frozen=True)
class MarkPlan:
    """The ``scontrol`` commands (argv after the program name) that bring a node to what
    was asked, in order, and what they amount to. No commands: nothing to do."""

    commands: tuple[tuple[str, ...], ...]
    detail: str


def plan_mark_unhealthy(
    node: SlurmNode, mark: NodeMark, fact: MarkFact, reboot: RebootMode = RebootMode.OFF
) -> MarkPlan:
    """Drain ``node`` for ``fact`` (and, opted in, ask Slurm to reboot it once)."""
    reason = drain_reason(mark, fact)
    if node.held and not node.reason.startswith(REASON_PREFIX):
        # an administrator's drain: left as it is, so that our recovery can never lift it
        return MarkPlan((), f"already drained by someone else ({node.reason!r}): left as is")
    current = parse_reason(node.reason) if node.drained else None
    same = current is not None and current.fact_id == fact.id
    commands: list[tuple[str, ...]] = []
    if not same:
        commands.append(("update", f"nodename={node.name}", "state=DRAIN", f"reason={reason}"))
    # Slurm appends to the reason once it has issued or finished a reboot: that reboot was ours
    rebooted = same and current is not None and "reboot" in current.suffix
    if (mark is NodeMark.PENDING_REBOOT and reboot is not RebootMode.OFF
            and not node.reboot_pending and not rebooted):
        commands.append(("reboot", "ASAP", f"nextstate={reboot.value.upper()}",
                         f"reason={reason}", node.name))  # fmt: skip
    if not commands:
        return MarkPlan((), f"already drained: {node.reason}")
    done = [word for word, cmd in (("drained", "update"), ("reboot requested", "reboot"))
            if any(c[0] == cmd for c in commands)]  # fmt: skip
    return MarkPlan(tuple(commands), f"{' and '.join(done)}: {reason}")


def plan_mark_healthy(node: SlurmNode) -> MarkPlan:
    """Resume ``node`` if, and only if, gpuwarden drained it."""
    if not node.drained:
        return MarkPlan((), "not drained")
    if not is_ours(node):
        if not node.held:  # down on its own: Slurm returns it when it registers again
            return MarkPlan((), f"{node.state} ({node.reason!r}), not drained by gpuwarden")
        return MarkPlan(
            (), f"drained by someone else ({node.reason!r}): left drained, gpuwarden never "
            "resumes a drain it did not make",
        )  # fmt: skip
    commands: list[tuple[str, ...]] = []
    if "REBOOT_REQUESTED" in node.flags:  # asked for, not yet begun: no longer wanted
        commands.append(("cancel_reboot", node.name))
    commands.append(("update", f"nodename={node.name}", "state=RESUME"))
    return MarkPlan(tuple(commands), f"resumed (was: {node.reason})")
