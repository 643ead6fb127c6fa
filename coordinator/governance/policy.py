"""The governance policy: priority classes, teams with quotas, lending and borrowing.

The file format follows SageMaker HyperPod task governance (DESIGN.md "Governance policy");
``docs/policy.md`` documents every field. Models are frozen and refuse unknown fields, so a
typo is an error rather than a silently ignored setting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from coordinator.governance.validation import (
    ConfigError,
    Problem,
    parse_yaml_mapping,
    problems_from,
    read_text,
)


class PolicyError(ConfigError):
    """A policy was refused: ``source`` (the file) and ``problems`` (field path, reason)."""


class AdmissionOrder(StrEnum):
    TASK_RANKING = "task-ranking"
    FIRST_COME_FIRST_SERVE = "first-come-first-serve"


class IdleComputeAllocation(StrEnum):
    FAIR_SHARE = "fair-share"
    FIRST_COME_FIRST_SERVE = "first-come-first-serve"


class Lending(StrEnum):
    LEND_AND_BORROW = "lend-and-borrow"
    LEND = "lend"
    DONT_LEND = "dont-lend"

    @property
    def lends(self) -> bool:
        return self is not Lending.DONT_LEND

    @property
    def borrows(self) -> bool:
        # HyperPod: only teams that lend may borrow, and "lend" alone means lend only.
        return self is Lending.LEND_AND_BORROW


class VictimOrder(StrEnum):
    CHECKPOINT_AWARE = "checkpoint-aware"
    """DESIGN.md: borrowed, then lower priority, then least work lost, then most recent."""
    PRIORITY_THEN_RECENT = "priority-then-recent"
    """Kueue's order: borrowed, then lower priority, then most recently admitted."""


_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


def _dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            "must be a DNS label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit, at most 63 characters"
        )
    return value


def _class_name(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            "must be a Kubernetes PriorityClass name: lowercase letters, digits, '-' and '.', "
            "at most 253 characters"
        )
    return value


DnsLabel = Annotated[str, AfterValidator(_dns_label)]
ClassName = Annotated[str, AfterValidator(_class_name)]


class _Strict(BaseModel):
    # Files use camelCase (the aliases) only; Python code may use the field names.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
        use_enum_values=False,
    )


class PriorityClass(_Strict):
    name: ClassName
    weight: int = Field(ge=0, le=100, description="0-100, higher wins")


class Quota(_Strict):
    gpus: int = Field(ge=0, description="guaranteed GPUs of healthy capacity")


class Team(_Strict):
    name: DnsLabel
    namespace: DnsLabel
    quota: Quota
    lending: Lending = Lending.LEND_AND_BORROW
    borrow_limit_percent: int = Field(default=50, ge=1, le=500)
    fair_share_weight: int = Field(default=0, ge=0, le=100)
    preempt_lower_priority: bool = False

    @property
    def borrow_limit_gpus(self) -> int:
        """How many GPUs beyond its guarantee the team may hold (0 when it does not borrow)."""
        if not self.lending.borrows:
            return 0
        return self.quota.gpus * self.borrow_limit_percent // 100


class PreemptionSettings(_Strict):
    victim_order: VictimOrder = VictimOrder.CHECKPOINT_AWARE
    default_grace_seconds: float = Field(default=30.0, ge=0, le=86_400)
    max_grace_seconds: float = Field(default=600.0, ge=0, le=86_400)
    """The most checkpoint grace a victim gets, whatever its pods ask for: its preemptor
    waits that long at most (HyperPod and Kueue users expect minutes, not days)."""
    aging_boost_per_preemption: int = Field(default=5, ge=0, le=100)
    aging_max_boost: int = Field(default=20, ge=0, le=100)
    max_victims_per_round: int = Field(default=1000, ge=1, le=1_000_000)
    """A round looks for no more victims once it has chosen this many: the preemptor that
    crosses it still gets its whole set, and the queue from the next task that would
    preempt on is decided in the next round (Slurm's ``default_queue_depth``, Kueue's one
    head per ClusterQueue per cycle). It bounds a round's work and the checkpoint storm
    one round starts, whatever the layout."""
    idle_first: bool = False
    """Among victims of the same standing (borrowed or own, same effective priority), take
    tasks the usage ledger flagged idle (GPUs under --idle-threshold for --idle-after)
    before busy ones: their preemption costs the least work."""

    def grace_for(self, asked: float | None) -> float:
        """The grace a victim gets: what it asked for (``None``: the default), at most
        ``max_grace_seconds``."""
        return min(self.default_grace_seconds if asked is None else asked, self.max_grace_seconds)


class ReservationSettings(_Strict):
    """Bounded wait (Slurm's backfill reservation): once the first task of a team's queue
    has waited longer than ``after_wait_seconds``, capacity is held for it as it frees up
    and the tasks behind it use only what does not delay it (docs/policy.md)."""

    after_wait_seconds: float | None = Field(default=3600.0, ge=0, le=30 * 86_400)
    """None: never (best effort, as Kueue's BestEffortFIFO)."""


class RequeueSettings(_Strict):
    max_requeues: int = Field(default=3, ge=0, le=1000)
    backoff_seconds: float = Field(default=30.0, ge=0, le=86_400)
    backoff_max_seconds: float = Field(default=900.0, ge=0, le=7 * 86_400)
    admitted_timeout_seconds: float | None = Field(default=600.0, gt=0, le=86_400)
    """An admitted task whose pods are not all running this long after its admission (an
    image that does not pull, a node selector nothing matches) is requeued, as Kueue's
    waitForPodsReady does: its GPUs are not held forever. None: never."""

    def backoff_for(self, attempt: int) -> float:
        """Seconds to wait before requeue number ``attempt`` (1-based) is admitted again:
        ``backoffSeconds * 2**(attempt-1)``, capped at ``backoffMaxSeconds``."""
        if attempt < 1 or self.backoff_seconds == 0:
            return 0.0
        exponent = min(attempt - 1, 62)  # keeps 2**n finite; the cap applies long before
        return float(min(self.backoff_max_seconds, self.backoff_seconds * 2**exponent))


class Policy(_Strict):
    admission: AdmissionOrder = AdmissionOrder.FIRST_COME_FIRST_SERVE
    idle_compute: IdleComputeAllocation = IdleComputeAllocation.FAIR_SHARE
    default_priority_class: ClassName | None = None
    priority_classes: tuple[PriorityClass, ...] = ()
    preemption: PreemptionSettings = PreemptionSettings()
    reservation: ReservationSettings = ReservationSettings()
    requeue: RequeueSettings = RequeueSettings()
    teams: tuple[Team, ...] = ()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        problems = list(_semantic_problems(self))
        if problems:
            raise PolicyError("<policy>", problems)
        return self

    def team_named(self, name: str) -> Team | None:
        return next((team for team in self.teams if team.name == name), None)

    def team_for_namespace(self, namespace: str) -> Team | None:
        return next((team for team in self.teams if team.namespace == namespace), None)

    def class_weights(self) -> dict[str, int]:
        return {cls.name: cls.weight for cls in self.priority_classes}

    def weight_of(self, priority_class: str | None) -> int:
        """The class's weight; the default class's for an absent or unknown class; else 0."""
        weights = self.class_weights()
        if priority_class is not None and priority_class in weights:
            return weights[priority_class]
        if self.default_priority_class is not None:
            return weights[self.default_priority_class]
        return 0

    def total_quota(self) -> int:
        return sum(team.quota.gpus for team in self.teams)


def _semantic_problems(policy: Policy) -> Iterator[Problem]:
    yield from _duplicates("priorityClasses", "name", [c.name for c in policy.priority_classes])
    yield from _duplicates("teams", "name", [t.name for t in policy.teams])
    yield from _duplicates("teams", "namespace", [t.namespace for t in policy.teams])
    names = {c.name for c in policy.priority_classes}
    if policy.default_priority_class is not None and policy.default_priority_class not in names:
        yield Problem(
            "defaultPriorityClass",
            f"no priority class named {policy.default_priority_class!r} in priorityClasses",
        )
    settings = policy.preemption
    if settings.default_grace_seconds > settings.max_grace_seconds:
        yield Problem(
            "preemption.defaultGraceSeconds",
            f"must be at most maxGraceSeconds ({settings.max_grace_seconds:g})",
        )
    if settings.aging_max_boost < settings.aging_boost_per_preemption:
        yield Problem(
            "preemption.agingMaxBoost",
            f"must be at least agingBoostPerPreemption ({settings.aging_boost_per_preemption})",
        )
    if policy.requeue.backoff_max_seconds < policy.requeue.backoff_seconds:
        yield Problem(
            "requeue.backoffMaxSeconds",
            f"must be at least backoffSeconds ({policy.requeue.backoff_seconds:g})",
        )


def _duplicates(section: str, key: str, values: list[str]) -> Iterator[Problem]:
    first_seen: dict[str, int] = {}
    singular = {"priorityClasses": "priority class", "teams": "team"}[section]
    for index, value in enumerate(values):
        if value in first_seen:
            yield Problem(
                f"{section}[{index}].{key}",
                f"duplicate {singular} {key} {value!r} (also {section}[{first_seen[value]}])",
            )
        else:
            first_seen[value] = index


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """A policy from YAML text; :class:`PolicyError` names ``source``, the field and why."""
    data = parse_yaml_mapping(text, source, PolicyError)
    return policy_from_mapping(data, source)


def policy_from_mapping(data: Mapping[str, Any], source: str = "<policy>") -> Policy:
    try:
        return Policy.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise PolicyError(source, problems_from(exc, Policy)) from None
    except PolicyError as exc:
        raise PolicyError(source, exc.problems) from None


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file. Raises :class:`PolicyError`."""
    return parse_policy(read_text(path, PolicyError), str(path))


@dataclass(frozen=True)
class PolicyChange:
    """One difference between two policies, for the audit log on a live reload."""

    field: str
    before: object
    after: object

    def __str__(self) -> str:
        if self.before is None:
            return f"{self.field}: added {_show(self.after)}"
        if self.after is None:
            return f"{self.field}: removed (was {_show(self.before)})"
        return f"{self.field}: {_show(self.before)} -> {_show(self.after)}"


def diff(old: Policy, new: Policy) -> list[PolicyChange]:
    """What changed from ``old`` to ``new``. Teams and classes are matched by name (so a
    reordering is no change) and paths name them: ``teams[research].quota.gpus``; a team or
    class that came or went is one change."""
    changes = _diff_flat("", _settings_of(old), _settings_of(new))
    changes += _diff_named("priorityClasses", _classes_of(old), _classes_of(new))
    changes += _diff_named("teams", _teams_of(old), _teams_of(new))
    return changes


def _settings_of(policy: Policy) -> dict[str, object]:
    data = policy.model_dump(by_alias=True, mode="json", exclude={"priority_classes", "teams"})
    flat: dict[str, object] = {}
    _flatten_into(flat, "", data)
    return flat


def _classes_of(policy: Policy) -> dict[str, dict[str, object]]:
    return {cls.name: {"weight": cls.weight} for cls in policy.priority_classes}


def _teams_of(policy: Policy) -> dict[str, dict[str, object]]:
    teams: dict[str, dict[str, object]] = {}
    for team in policy.teams:
        flat: dict[str, object] = {}
        _flatten_into(flat, "", team.model_dump(by_alias=True, mode="json", exclude={"name"}))
        teams[team.name] = flat
    return teams


def _diff_named(
    section: str, old: dict[str, dict[str, object]], new: dict[str, dict[str, object]]
) -> list[PolicyChange]:
    changes: list[PolicyChange] = []
    for name in sorted(old.keys() | new.keys()):
        path = f"{section}[{name}]"
        if name not in new:
            changes.append(PolicyChange(path, _brief(old[name]), None))
        elif name not in old:
            changes.append(PolicyChange(path, None, _brief(new[name])))
        else:
            changes += _diff_flat(path, old[name], new[name])
    return changes


def _diff_flat(prefix: str, old: dict[str, object], new: dict[str, object]) -> list[PolicyChange]:
    changes = []
    for key in sorted(old.keys() | new.keys()):
        if old.get(key) != new.get(key):
            path = f"{prefix}.{key}" if prefix else key
            changes.append(PolicyChange(path, old.get(key), new.get(key)))
    return changes


def _flatten_into(flat: dict[str, object], prefix: str, value: object) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_into(flat, f"{prefix}.{key}" if prefix else str(key), item)
    else:
        flat[prefix] = value


def _brief(fields: dict[str, object]) -> dict[str, object]:
    return dict(fields)


def _show(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}: {_show(item)}" for key, item in value.items()) + "}"
    return repr(value) if isinstance(value, str) else str(value)
