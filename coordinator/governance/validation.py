"""Configuration files (policy, workload): YAML loading and error reports that name the field.

A bad file is refused with the file, the field path in the file's own spelling
(``teams[1].borrowLimitPercent``) and the reason, so an operator can fix it without reading
a traceback. Pydantic's errors are turned into that form here.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration file: where (field path, empty for the whole
    document) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}" if self.field else self.reason


class ConfigError(Exception):
    """A configuration file was refused. Not a ValueError on purpose: pydantic would swallow
    a ValueError raised by a validator and lose the field paths we carry."""

    def __init__(self, source: str, problems: Sequence[Problem]) -> None:
        self.source = source
        self.problems = tuple(problems)
        super().__init__(self._render())

    def _render(self) -> str:
        if len(self.problems) == 1:
            return f"{self.source}: {self.problems[0]}"
        lines = [f"{self.source}: {len(self.problems)} problems"]
        lines.extend(f"  {problem}" for problem in self.problems)
        return "\n".join(lines)

    def with_source(self, source: str) -> ConfigError:
        return type(self)(source, self.problems)


def field_path(loc: Sequence[str | int]) -> str:
    """``('teams', 1, 'quota', 'gpus')`` -> ``teams[1].quota.gpus``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def problems_from(error: ValidationError, root: type[BaseModel]) -> list[Problem]:
    return [_problem(detail, root) for detail in error.errors()]


def _problem(detail: Any, root: type[BaseModel]) -> Problem:
    loc: tuple[str | int, ...] = tuple(detail["loc"])
    kind: str = detail["type"]
    if kind == "extra_forbidden":
        return Problem(field_path(loc), _unknown_field_reason(root, loc))
    reason = str(detail["msg"]).removeprefix("Value error, ")
    given = detail.get("input")
    if kind != "missing" and isinstance(given, str | int | float | bool):
        reason += f" (got {given!r})"
    return Problem(field_path(loc), reason)


def _unknown_field_reason(root: type[BaseModel], loc: tuple[str | int, ...]) -> str:
    known = _known_fields(root, loc[:-1])
    if not known:
        return "unknown field"
    typo = str(loc[-1])
    close = difflib.get_close_matches(typo, known, n=1)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field; expected one of: " + ", ".join(sorted(known))


def _known_fields(root: type[BaseModel], parent: tuple[str | int, ...]) -> list[str]:
    """The spellings a file may use at ``parent`` (walking the models by alias)."""
    model: type[BaseModel] | None = root
    for part in parent:
        if model is None:
            return []
        if isinstance(part, int):
            continue
        model = _model_of_field(model, part)
    if model is None:
        return []
    return [info.alias or name for name, info in model.model_fields.items()]


def _model_of_field(model: type[BaseModel], alias: str) -> type[BaseModel] | None:
    for name, info in model.model_fields.items():
        if (info.alias or name) == alias:
            return _first_model_in(info.annotation)
    return None


def _first_model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is None:
        return None
    if origin is typing.Union or origin is types.UnionType or origin in (tuple, list):
        for arg in typing.get_args(annotation):
            found = _first_model_in(arg)
            if found is not None:
                return found
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML keeps the last of two equal keys without a word; a repeated key is a typo we
    refuse, like an unknown one."""


def _construct_unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _value in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_unique_mapping,
)


def parse_yaml_mapping(text: str, source: str, error: type[ConfigError]) -> Mapping[str, Any]:
    """The document as a mapping, or ``error`` naming the line and column."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise error(source, [Problem("", _yaml_reason(exc))]) from exc
    if data is None:
        raise error(source, [Problem("", "the file is empty")])
    if not isinstance(data, dict):
        raise error(source, [Problem("", f"expected a mapping at the top, got {_kind(data)}")])
    return data


def read_text(path: str | Path, error: type[ConfigError]) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise error(str(path), [Problem("", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise error(str(path), [Problem("", "the file is not UTF-8 text")]) from exc


def _yaml_reason(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    if mark is not None:
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return f"invalid YAML: {problem}"


def _kind(value: object) -> str:
    if isinstance(value, list):
        return "a list"
    return f"a {type(value).__name__}"
