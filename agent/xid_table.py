"""The XID classification (data, not code) and the per-GPU history that escalates repeats.

:meth:`XidTable.load` reads the packaged ``agent/data/xid.yaml`` and, when given a file, lays
that file's codes over it. :class:`XidHistory` remembers reboot-class faults per GPU UUID in a
small JSON file that survives reboots, so that a GPU failing again after its reboot is
escalated to ``replace`` instead of being rebooted forever.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import structlog
import yaml

from gpuwarden_common.health import Action, Severity

log = structlog.get_logger(__name__)

DEFAULT_TABLE_NAME = "agent/data/xid.yaml (packaged default)"
_RULE_FIELDS = ("description", "severity", "action", "sticky")
_ESCALATION_FIELDS = ("reboot_faults_before_replace", "window_days")
_TOP_FIELDS = ("escalation", "unknown", "xids")
_MAX_XID = 65535
_SECONDS_PER_DAY = 86400.0
_E = TypeVar("_E", Severity, Action)


class XidTableError(ValueError):
    """A table file that cannot be used. Names the file, the XID code and the field."""

    def __init__(self, path: str, code: int | None, field: str | None, reason: str) -> None:
        where = [path]
        if code is not None:
            where.append(f"xid {code}")
        if field is not None:
            where.append(f"field {field!r}")
        super().__init__(f"{': '.join(where)}: {reason}")
        self.path = path
        self.code = code
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class XidRule:
    code: int
    description: str
    severity: Severity
    action: Action
    sticky: bool

    @property
    def reboot_class(self) -> bool:
        """Counted towards escalation: a fault whose remedy is a reboot."""
        return self.action is Action.REBOOT


@dataclass(frozen=True)
class Escalation:
    reboot_faults_before_replace: int = 2
    window_s: float = 7 * _SECONDS_PER_DAY


@dataclass(frozen=True)
class XidTable:
    rules: Mapping[int, XidRule]
    unknown: XidRule
    escalation: Escalation
    source: str = DEFAULT_TABLE_NAME

    def rule(self, xid: int) -> XidRule:
        known = self.rules.get(xid)
        if known is not None:
            return known
        return replace(self.unknown, code=xid, description=f"XID {xid} (not in the XID table)")

    @classmethod
    def load(cls, path: Path | None = None) -> XidTable:
        """The packaged default, with ``path``'s codes overriding or extending it."""
        text = resources.files("agent").joinpath("data/xid.yaml").read_text(encoding="utf-8")
        table = _parse(_EMPTY, text, DEFAULT_TABLE_NAME)
        if path is None:
            return table
        try:
            override = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise XidTableError(str(path), None, None, f"cannot read: {exc}") from None
        return _parse(table, override, str(path))


_EMPTY = XidTable(
    rules={},
    unknown=XidRule(0, "", Severity.WARNING, Action.RESTART_APP, sticky=False),
    escalation=Escalation(),
    source="",
)


def _parse(base: XidTable, text: str, source: str) -> XidTable:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise XidTableError(source, None, None, f"not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    top = _mapping(doc, source, None, None)
    _no_unknown_fields(top, _TOP_FIELDS, source, None, "")

    unknown = base.unknown
    if "unknown" in top:
        fields = _mapping(top["unknown"], source, None, "unknown")
        _no_unknown_fields(fields, _RULE_FIELDS, source, None, "unknown.")
        unknown = _merge_rule(unknown, fields, source, None, "unknown.")

    escalation = base.escalation
    if "escalation" in top:
        escalation = _parse_escalation(escalation, top["escalation"], source)

    rules = dict(base.rules)
    for raw_code, raw_fields in _mapping(top.get("xids", {}), source, None, "xids").items():
        code = _code(raw_code, source)
        fields = _mapping(raw_fields, source, code, None)
        _no_unknown_fields(fields, _RULE_FIELDS, source, code, "")
        start = rules.get(code)
        if start is None:
            if "description" not in fields:
                raise XidTableError(source, code, "description", "required for a new code")
            start = replace(unknown, code=code)
        rules[code] = _merge_rule(start, fields, source, code, "")
    return XidTable(rules=rules, unknown=unknown, escalation=escalation, source=source)


def _parse_escalation(base: Escalation, raw: object, source: str) -> Escalation:
    fields = _mapping(raw, source, None, "escalation")
    _no_unknown_fields(fields, _ESCALATION_FIELDS, source, None, "escalation.")
    result = base
    if "reboot_faults_before_replace" in fields:
        value = fields["reboot_faults_before_replace"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise XidTableError(
                source,
                None,
                "escalation.reboot_faults_before_replace",
                f"must be an integer >= 1, got {value!r}",
            )
        result = replace(result, reboot_faults_before_replace=value)
    if "window_days" in fields:
        value = fields["window_days"]
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise XidTableError(
                source, None, "escalation.window_days", f"must be a number > 0, got {value!r}"
            )
        result = replace(result, window_s=float(value) * _SECONDS_PER_DAY)
    return result


def _merge_rule(
    start: XidRule, fields: Mapping[str, Any], source: str, code: int | None, prefix: str
) -> XidRule:
    rule = start
    if "description" in fields:
        value = fields["description"]
        if not isinstance(value, str) or not value.strip() or len(value) > 200:
            raise XidTableError(
                source,
                code,
                f"{prefix}description",
                f"must be a non-empty string of at most 200 characters, got {value!r}",
            )
        rule = replace(rule, description=value.strip())
    if "severity" in fields:
        rule = replace(
            rule, severity=_enum(Severity, fields["severity"], source, code, f"{prefix}severity")
        )
    if "action" in fields:
        rule = replace(
            rule, action=_enum(Action, fields["action"], source, code, f"{prefix}action")
        )
    if "sticky" in fields:
        value = fields["sticky"]
        if not isinstance(value, bool):
            raise XidTableError(
                source, code, f"{prefix}sticky", f"must be true or false, got {value!r}"
            )
        rule = replace(rule, sticky=value)
    return rule


def _enum(kind: type[_E], value: object, source: str, code: int | None, field: str) -> _E:
    allowed = [member.value for member in kind]
    if not isinstance(value, str) or value not in allowed:
        raise XidTableError(source, code, field, f"{value!r} is not one of {', '.join(allowed)}")
    return kind(value)


def _code(raw: object, source: str) -> int:
    if isinstance(raw, str) and raw.strip().isdigit():
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 1 <= raw <= _MAX_XID:
        raise XidTableError(source, None, "xids", f"{raw!r} is not an XID code (1-{_MAX_XID})")
    return raw


def _mapping(raw: object, source: str, code: int | None, field: str | None) -> Mapping[Any, Any]:
    if not isinstance(raw, Mapping):
        raise XidTableError(source, code, field, f"must be a mapping, got {type(raw).__name__}")
    return raw


def _no_unknown_fields(
    fields: Mapping[Any, Any], allowed: tuple[str, ...], source: str, code: int | None, prefix: str
) -> None:
    for name in fields:
        if name not in allowed:
            raise XidTableError(
                source, code, f"{prefix}{name}", f"unknown field (expected one of {allowed})"
            )


@dataclass(frozen=True)
class _Fault:
    gpu_uuid: str
    boot_id: str
    xid: int
    ts: float


class XidHistory:
    """Reboot-class XIDs per GPU UUID, kept in a JSON file across reboots (None: memory only).

    A fault is counted once per boot: every reboot-class XID of one boot is the same incident,
    since the first one already calls for the reboot. The file is small (faults older than the
    window are dropped on each write) and written atomically; an unreadable or corrupt file is
    logged and replaced rather than stopping the agent.
    """

    _MAX_FAULTS = 10_000

    def __init__(self, path: Path | None, boot_id: str | None = None) -> None:
        self._path = path
        self._boot_id = boot_id or uuid.uuid4().hex
        self._faults: list[_Fault] = self._read() if path is not None else []

    def record(self, gpu_uuid: str, xid: int, ts: float, window_s: float) -> int:
        """Record a reboot-class fault; returns the GPU's faults (distinct boots) in the window."""
        start = ts - window_s
        self._faults = [f for f in self._faults if f.ts >= start]
        if not any(f.gpu_uuid == gpu_uuid and f.boot_id == self._boot_id for f in self._faults):
            self._faults.append(_Fault(gpu_uuid, self._boot_id, xid, ts))
            self._faults = self._faults[-self._MAX_FAULTS :]
            self._write()
        return len({f.boot_id for f in self._faults if f.gpu_uuid == gpu_uuid})

    def _read(self) -> list[_Fault]:
        assert self._path is not None
        try:
            doc = json.loads(self._path.read_text(encoding="utf-8"))
            return [
                _Fault(str(f["gpu_uuid"]), str(f["boot_id"]), int(f["xid"]), float(f["ts"]))
                for f in doc["faults"]
            ]
        except FileNotFoundError:
            return []
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("xid_history_unreadable", path=str(self._path), error=str(exc))
            return []

    def _write(self) -> None:
        if self._path is None:
            return
        doc = {"version": 1, "faults": [f.__dict__ for f in self._faults]}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=f".{self._path.name}.")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    json.dump(doc, out)
                    out.flush()
                    # the fault that triggered this write may well be followed by a hard reset
                    os.fsync(out.fileno())
                os.replace(tmp, self._path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            log.warning("xid_history_unwritable", path=str(self._path), error=str(exc))
