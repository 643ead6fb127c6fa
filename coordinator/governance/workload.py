"""Workload files for the simulated cluster: nodes, tasks, task streams and node faults.

Durations are seconds or strings such as ``90s``, ``30m``, ``6h``, ``2d``, ``1h30m``.
Streams generate tasks with exponential inter-arrival times and log-uniform durations,
from the workload's seed, so the same file always yields the same tasks.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Self

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from coordinator.governance.policy import Policy
from coordinator.governance.validation import (
    ConfigError,
    Problem,
    parse_yaml_mapping,
    problems_from,
    read_text,
)


class WorkloadError(ConfigError):
    """A workload file was refused: the file, the field path and the reason."""


_UNIT_SECONDS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string like ``1h30m``."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30m'")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip().replace(" ", "")
        if text and _DURATION_PART.sub("", text) == "" and _DURATION_PART.match(text):
            return sum(
                float(number) * _UNIT_SECONDS[unit] for number, unit in _DURATION_PART.findall(text)
            )
    raise ValueError("a duration is a number of seconds or a string like '30m', '6h', '1h30m'")


Seconds = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=True,
    )


class ClusterSpec(_Strict):
    nodes: int = Field(ge=1, le=100_000)
    gpus_per_node: int = Field(default=8, ge=1, le=64)
    name_prefix: str = "node"

    def node_names(self) -> list[str]:
        width = max(3, len(str(self.nodes - 1)))
        return [f"{self.name_prefix}-{index:0{width}d}" for index in range(self.nodes)]


class TaskSpec(_Strict):
    """One task: ``size`` pods of ``gpus`` GPUs each, needing ``duration`` of run time."""

    team: str
    name: str | None = None
    priority_class: str | None = None
    gpus: int = Field(ge=0, le=64)
    size: int = Field(default=1, ge=1, le=4096)
    duration: Seconds
    arrival: Seconds = 0.0
    checkpoint_interval: Seconds | None = None
    checkpoint_on_preempt: bool = False
    """The task saves a checkpoint in its grace period, so a preemption loses nothing."""
    max_requeues: int | None = Field(default=None, ge=0)
    checkpoint_grace: Seconds | None = None

    @property
    def demand(self) -> int:
        return self.gpus * self.size


class StreamSpec(_Strict):
    """Tasks arriving at random: one every ``every`` on average, from ``from`` until
    ``until``, each drawing its GPUs and size from the lists and a log-uniform duration in
    ``[duration[0], duration[1]]``."""

    team: str
    priority_class: str | None = None
    every: Seconds = Field(gt=0)
    start: Seconds = Field(default=0.0, alias="from")
    until: Seconds
    gpus: tuple[Annotated[int, Field(ge=0, le=64)], ...] = Field(min_length=1)
    size: tuple[Annotated[int, Field(ge=1, le=4096)], ...] = Field(default=(1,), min_length=1)
    duration: tuple[Seconds, Seconds]
    checkpoint_interval: Seconds | None = None
    checkpoint_on_preempt: bool = False
    max_requeues: int | None = Field(default=None, ge=0)

    @field_validator("duration")
    @classmethod
    def _shortest_first(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if low <= 0 or high < low:
            raise ValueError("must be [shortest, longest] with 0 < shortest <= longest")
        return value

    @model_validator(mode="after")
    def _window(self) -> Self:
        if self.until < self.start:
            raise ValueError("'until' must not be before 'from'")
        return self


class FaultSpec(_Strict):
    node: str
    at: Seconds
    repair: Seconds = Field(gt=0)


class RandomFaultsSpec(_Strict):
    mtbf: Seconds = Field(gt=0)
    """Mean time between faults of one node."""
    repair: Seconds = Field(gt=0)


class Workload(_Strict):
    seed: int = 0
    cluster: ClusterSpec
    tasks: tuple[TaskSpec, ...] = ()
    streams: tuple[StreamSpec, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    random_faults: RandomFaultsSpec | None = None

    def problems_with(self, policy: Policy) -> list[Problem]:
        """What the policy and the cluster do not know: teams, classes, nodes."""
        teams = {team.name for team in policy.teams}
        classes = set(policy.class_weights())
        nodes = set(self.cluster.node_names())
        problems: list[Problem] = []
        sources: list[tuple[str, tuple[str, str | None]]] = [
            *(
                (f"tasks[{i}]", (spec.team, spec.priority_class))
                for i, spec in enumerate(self.tasks)
            ),
            *(
                (f"streams[{i}]", (spec.team, spec.priority_class))
                for i, spec in enumerate(self.streams)
            ),
        ]
        for path, (team, priority_class) in sources:
            if team not in teams:
                problems.append(Problem(f"{path}.team", f"no team {team!r} in the policy"))
            if priority_class is not None and priority_class not in classes:
                problems.append(
                    Problem(
                        f"{path}.priorityClass",
                        f"no priority class {priority_class!r} in the policy",
                    )
                )
        for index, fault in enumerate(self.faults):
            if fault.node not in nodes:
                problems.append(Problem(f"faults[{index}].node", f"no node {fault.node!r}"))
        seen: set[str] = set()
        for index, spec in enumerate(self.tasks):
            if spec.name is not None and spec.name in seen:
                problems.append(Problem(f"tasks[{index}].name", f"duplicate task {spec.name!r}"))
            seen.add(spec.name or "")
        return problems

    def expand(self) -> list[TaskSpec]:
        """Every task of the workload, named, in arrival order (then name)."""
        specs = [
            spec if spec.name is not None else spec.model_copy(update={"name": f"task-{index}"})
            for index, spec in enumerate(self.tasks)
        ]
        rng = random.Random(self.seed)
        for index, stream in enumerate(self.streams):
            specs.extend(_stream_tasks(stream, index, rng))
        specs.sort(key=lambda spec: (spec.arrival, spec.name or ""))
        return specs


def _stream_tasks(stream: StreamSpec, index: int, rng: random.Random) -> Iterator[TaskSpec]:
    low, high = stream.duration
    at = stream.start + rng.expovariate(1.0 / stream.every)
    number = 0
    while at < stream.until:
        duration = math.exp(rng.uniform(math.log(low), math.log(high)))
        yield TaskSpec(
            team=stream.team,
            name=f"{stream.team}-s{index}-{number:05d}",
            priority_class=stream.priority_class,
            gpus=rng.choice(stream.gpus),
            size=rng.choice(stream.size),
            duration=round(duration, 3),
            arrival=round(at, 3),
            checkpoint_interval=stream.checkpoint_interval,
            checkpoint_on_preempt=stream.checkpoint_on_preempt,
            max_requeues=stream.max_requeues,
        )
        number += 1
        at += rng.expovariate(1.0 / stream.every)


def parse_workload(text: str, source: str = "<workload>") -> Workload:
    data = parse_yaml_mapping(text, source, WorkloadError)
    return workload_from_mapping(data, source)


def workload_from_mapping(data: Any, source: str = "<workload>") -> Workload:
    try:
        return Workload.model_validate(data, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise WorkloadError(source, problems_from(exc, Workload)) from None


def load_workload(path: str | Path, policy: Policy | None = None) -> Workload:
    """Read and validate a workload file; with ``policy``, also check that its teams,
    priority classes and nodes exist. Raises :class:`WorkloadError`."""
    workload = parse_workload(read_text(path, WorkloadError), str(path))
    if policy is not None:
        problems = workload.problems_with(policy)
        if problems:
            raise WorkloadError(str(path), problems)
    return workload
