"""The ingest gate: which agent messages reach the coordinator's model. Pure: bytes and a
topic in, an accepted message or a :class:`~gpuwarden_common.wire.WireError` out, counted.

Ordering is per node: each node has a current ``boot_id`` (a new one starts over, and the
boots it replaced are remembered so their late messages are refused) and, for status and
state, the last accepted ``seq``. Retained replays after a reconnect therefore come back
``stale``. Events are not ordered but deduplicated on ``event_id``: an agent resends every
event until the coordinator acknowledges it (:class:`coordinator.ingest.Ingestor` publishes
the acks), so a resend may come after newer messages and must still be taken.

A forged or cloned publisher must not silence the real agent: a status or state stamped
further ahead of the coordinator's clock than ``max_clock_skew_s`` is refused
(``clock_skew``), and a boot that was replaced but keeps talking (its message is newer than
the switch) is taken back as the node's boot and reported as a conflict, never ignored.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from coordinator.ingest_metrics import IngestMetrics
from gpuwarden_common.wire import (
    TOPIC_ROOT,
    AgentMessage,
    EventMessage,
    Kind,
    WireError,
    decode,
    parse_node_topic,
)

# Reasons the gate adds to wire.decode's own (bad_topic, oversized, bad_json,
# unknown_schema, invalid, node_mismatch).
WRONG_CLUSTER = "wrong_cluster"
STALE = "stale"
DUPLICATE = "duplicate"
CLOCK_SKEW = "clock_skew"
INTERNAL_ERROR = "internal_error"


class Refusal(WireError):
    """A valid message the gate will not pass on; ``message`` is it, decoded."""

    def __init__(self, reason: str, detail: str, message: AgentMessage) -> None:
        super().__init__(reason, detail)
        self.message = message


@dataclass(frozen=True, slots=True)
class BootConflict:
    """Two boots of one node talk at once: a forger, or a cloned machine."""

    node: str
    live_boot: str
    other_boot: str

_UNKNOWN_KIND = "unknown"
_KIND_OF_TYPE = {"status": Kind.STATUS, "state": Kind.STATE, "event": Kind.EVENTS}


# --- the gate (pure) ------------------------------------------------------------------------


@dataclass(slots=True)
class _Cursor:
    seq: int
    ts: float


@dataclass(slots=True)
class _Boot:
    """One boot's cursors; ``replaced_at`` is the agent time of the first message of the boot
    that replaced it (what it said before that is history, what it says after, a conflict)."""

    boot_id: str
    cursors: dict[Kind, _Cursor] = field(default_factory=dict)
    replaced_at: float = 0.0


@dataclass(slots=True)
class _NodeOrder:
    current: _Boot
    retired: OrderedDict[str, _Boot] = field(default_factory=OrderedDict)


_RETIRED_BOOTS = 4


class IngestGate:
    """Decides which agent messages reach the model. Not thread-safe: one caller.

    ``accept`` raises :class:`WireError` for every refusal (:class:`Refusal`, with the decoded
    message, once it decoded); ``err.reason`` is the metric label. Beyond
    :func:`~gpuwarden_common.wire.decode`'s checks it refuses:

    - ``wrong_cluster``: the topic or the payload names another cluster;
    - ``clock_skew``: a status or state stamped more than ``max_clock_skew_s`` ahead of now;
    - ``stale``: same boot and a ``seq`` not above the last accepted for that node and kind
      (retained replays, reordering), or a message a replaced boot sent before it was
      replaced;
    - ``duplicate``: an event whose ``event_id`` was accepted within the recent window.

    One exception to ``stale``: a lower ``seq`` with a *later* agent timestamp than the
    last accepted is the agent process restarting within the same boot (its counter
    starts at 0 again), so it starts over instead of being refused until the counter
    catches up. A replay carries its original timestamp and stays stale.
    """

    def __init__(
        self,
        cluster: str,
        registry: CollectorRegistry,
        *,
        dedupe_window_s: float = 3600.0,
        dedupe_max: int = 100_000,
        max_nodes: int = 100_000,
        max_clock_skew_s: float = 30.0,
    ) -> None:
        self.cluster = cluster
        self.metrics = IngestMetrics(registry)
        self._topic_prefix = f"{TOPIC_ROOT}/{cluster}/"
        self._dedupe_window_s = dedupe_window_s
        self._dedupe_max = dedupe_max
        self._max_nodes = max_nodes
        self._max_skew_s = max_clock_skew_s
        self._nodes: OrderedDict[str, _NodeOrder] = OrderedDict()
        self._recent_events: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._conflicts: list[BootConflict] = []

    def accept(self, topic: str, payload: bytes, now: float) -> AgentMessage:
        try:
            if not topic.startswith(self._topic_prefix):
                # the rare path: say whether the topic is malformed or another cluster's
                topic_cluster, _, _ = parse_node_topic(topic)
                raise WireError(WRONG_CLUSTER, f"topic cluster {topic_cluster!r}")
            msg = decode(topic, payload)
            if msg.cluster != self.cluster:
                raise WireError(WRONG_CLUSTER, f"payload cluster {msg.cluster!r}")
            kind = _KIND_OF_TYPE[msg.type]
            self._admit(kind, msg, now)
        except WireError as err:
            self.metrics.count(kind_of(topic), "rejected", err.reason)
            raise
        self.metrics.count(kind.value, "accepted")
        return msg

    def count_internal_error(self, kind: str) -> None:
        """For the caller: a message passed the gate but handling it raised."""
        self.metrics.count(kind, INTERNAL_ERROR, INTERNAL_ERROR)

    def forget_node(self, node: str) -> None:
        """Drop a node's ordering state (the model removed the node)."""
        self._nodes.pop(node, None)

    @property
    def has_conflicts(self) -> bool:
        return bool(self._conflicts)

    def take_conflicts(self) -> Sequence[BootConflict]:
        """Boot conflicts seen since the last call, for the caller to report."""
        if not self._conflicts:
            return ()
        found, self._conflicts = self._conflicts, []
        return found

    def _admit(self, kind: Kind, msg: AgentMessage, now: float) -> None:
        """Check order and duplicates; commit only when the message is accepted."""
        event_key: tuple[str, str] | None = None
        if isinstance(msg, EventMessage):
            self._expire_events(now)
            event_key = (msg.node, msg.event_id)
            if event_key in self._recent_events:
                raise Refusal(DUPLICATE, f"event {msg.event_id} from {msg.node}", msg)
        elif msg.ts > now + self._max_skew_s:
            raise Refusal(
                CLOCK_SKEW,
                f"{msg.node}: stamped {msg.ts - now:.0f}s ahead of this coordinator's clock "
                f"(at most {self._max_skew_s:g}s); check the node's NTP",
                msg,
            )
        boot = self._boot_of(msg)
        if event_key is None:
            cursor = boot.cursors.get(kind)
            if cursor is not None and msg.seq <= cursor.seq and msg.ts <= cursor.ts:
                raise Refusal(STALE, f"{msg.node} {kind.value} seq {msg.seq} <= {cursor.seq}",
                              msg)  # fmt: skip
            boot.cursors[kind] = _Cursor(msg.seq, msg.ts)
        self._nodes.move_to_end(msg.node)

        if event_key is not None:
            self._recent_events[event_key] = now
            if len(self._recent_events) > self._dedupe_max:
                self._recent_events.popitem(last=False)

    def _boot_of(self, msg: AgentMessage) -> _Boot:
        """The boot ``msg`` belongs to, made the node's current one; raises for history."""
        order = self._nodes.get(msg.node)
        if order is None:
            order = self._nodes[msg.node] = _NodeOrder(_Boot(msg.boot_id))
            # A hostile or misconfigured publisher inventing node names must not grow memory
            # without bound: the least recently heard node loses its ordering state first.
            while len(self._nodes) > self._max_nodes:
                self._nodes.popitem(last=False)
            return order.current
        if order.current.boot_id == msg.boot_id:
            return order.current
        returning = order.retired.get(msg.boot_id)
        if returning is not None:
            if msg.ts <= returning.replaced_at:
                raise Refusal(STALE, f"{msg.node}: boot {msg.boot_id} was replaced", msg)
            # the boot that was replaced is still talking: two boots at once
            self.metrics.boot_conflicts.inc()
            self._conflicts.append(BootConflict(msg.node, msg.boot_id, order.current.boot_id))
            del order.retired[msg.boot_id]
        else:
            returning = _Boot(msg.boot_id)
        order.current.replaced_at = msg.ts
        order.retired[order.current.boot_id] = order.current
        while len(order.retired) > _RETIRED_BOOTS:
            order.retired.popitem(last=False)
        order.current = returning
        return returning

    def _expire_events(self, now: float) -> None:
        horizon = now - self._dedupe_window_s
        recent = self._recent_events
        while recent:
            oldest_key = next(iter(recent))
            if recent[oldest_key] >= horizon:
                break
            del recent[oldest_key]



def kind_of(topic: str) -> str:
    """The metric label of a topic's kind."""
    tail = topic.rpartition("/")[2]
    return tail if tail in _KIND_VALUES else _UNKNOWN_KIND


_KIND_VALUES = frozenset(k.value for k in Kind)


