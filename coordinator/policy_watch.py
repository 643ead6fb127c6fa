"""Live reload of the governance policy file.

On Kubernetes the policy is a ConfigMap mounted as a file; the kubelet updates the mounted
file in place (an atomic symlink swap) some time after the ConfigMap changes. The watch reads
the file every few seconds and, when its content changed, validates it whole: a good policy is
handed to the governor and its differences (:func:`~coordinator.governance.policy.diff`) go to
the audit log; a bad one is refused, the governor keeps the policy it has, and the refusal is
audited with the field and reason, once per bad content (not on every poll).

Polling rather than inotify: a ConfigMap swap replaces the directory the file lives in, which
file watches follow badly, and a small file read every few seconds costs nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import CollectorRegistry, Counter

from coordinator.audit import AuditEntry, AuditKind, AuditLog
from coordinator.governance.policy import Policy, PolicyChange, PolicyError, diff, parse_policy
from coordinator.governance.validation import read_text

log = structlog.get_logger("coordinator.policy")

DEFAULT_INTERVAL_S = 5.0


def one_line(error: PolicyError) -> str:
    """``FILE: field: reason; field: reason`` - for a startup refusal or a log line."""
    return f"{error.source}: " + "; ".join(str(problem) for problem in error.problems)


@dataclass(frozen=True)
class Reloaded:
    """The file holds a valid policy that differs from the one in force (or the file is
    valid again after a refusal: ``changes`` may then be empty)."""

    policy: Policy
    changes: tuple[PolicyChange, ...]


@dataclass(frozen=True)
class Refused:
    """The file changed to something that is not a valid policy; the old one stays."""

    error: PolicyError


PollOutcome = Reloaded | Refused | None


class PolicyFile:
    """The policy file and the policy in force from it. :meth:`poll` is pure bookkeeping
    over one read of the file, so it is tested without timers."""

    def __init__(self, path: Path, policy: Policy, fingerprint: str) -> None:
        self.path = path
        self.policy = policy
        self._seen = fingerprint
        self._refused = False

    @classmethod
    def load(cls, path: Path | str) -> PolicyFile:
        """Read and validate the file; raises :class:`PolicyError` (file, field, reason)."""
        path = Path(path)
        text = read_text(path, PolicyError)
        return cls(path, parse_policy(text, str(path)), _fingerprint(text))

    def poll(self) -> PollOutcome:
        """Read the file again. None when it did not change (or changed to what was already
        refused, or to a policy equal to the one in force)."""
        try:
            text = read_text(self.path, PolicyError)
        except PolicyError as exc:
            # a missing or unreadable file: refused once until it changes again
            return self._refuse(f"error:{exc}", exc)
        fingerprint = _fingerprint(text)
        if fingerprint == self._seen:
            return None
        try:
            policy = parse_policy(text, str(self.path))
        except PolicyError as exc:
            return self._refuse(fingerprint, exc)
        self._seen = fingerprint
        changes = tuple(diff(self.policy, policy))
        was_refused, self._refused = self._refused, False
        self.policy = policy
        if not changes and not was_refused:
            return None
        return Reloaded(policy, changes)

    def _refuse(self, fingerprint: str, error: PolicyError) -> PollOutcome:
        if fingerprint == self._seen:
            return None
        self._seen = fingerprint
        self._refused = True
        return Refused(error)


def _fingerprint(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class PolicyWatch:
    """Polls a :class:`PolicyFile`, hands a new policy to ``apply`` and audits each outcome."""

    def __init__(
        self,
        policy_file: PolicyFile,
        apply: Callable[[Policy], None],
        audit: AuditLog,
        *,
        actor: str,
        interval_s: float = DEFAULT_INTERVAL_S,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.file = policy_file
        self._apply = apply
        self._audit = audit
        self._actor = actor
        self._interval_s = interval_s
        self._reloads = Counter(
            "gpuwarden_policy_reloads",
            "Changes of the policy file seen, by outcome (applied or refused)",
            ["outcome"],
            registry=registry,
        )

    @property
    def policy(self) -> Policy:
        return self.file.policy

    async def run(self) -> None:
        """Poll until cancelled. A failure of one poll (say, the audit disk) is logged and
        the next poll goes on."""
        while True:
            await asyncio.sleep(self._interval_s)
            try:
                await self.check()
            except Exception:
                log.exception("policy.poll_failed", path=str(self.file.path))

    async def check(self) -> PollOutcome:
        """One poll: apply and audit what it found."""
        outcome = await asyncio.to_thread(self.file.poll)
        if isinstance(outcome, Reloaded):
            self._apply(outcome.policy)
            self._reloads.labels("applied").inc()
            summary = "; ".join(str(change) for change in outcome.changes) or "no change"
            log.info("policy.reloaded", path=str(self.file.path), changes=summary)
            await self._record(
                action="reload",
                reason=f"policy reloaded from {self.file.path}: {summary}",
                outcome="applied",
                details={
                    "path": str(self.file.path),
                    "changes": [
                        {"field": c.field, "before": c.before, "after": c.after}
                        for c in outcome.changes
                    ],
                },
            )
        elif isinstance(outcome, Refused):
            self._reloads.labels("refused").inc()
            log.error("policy.refused", path=str(self.file.path), error=one_line(outcome.error))
            await self._record(
                action="reload",
                reason=f"policy file refused, the policy in force is kept: "
                f"{one_line(outcome.error)}",
                outcome="refused",
                details={
                    "path": str(self.file.path),
                    "problems": [
                        {"field": p.field, "reason": p.reason} for p in outcome.error.problems
                    ],
                },
            )
        return outcome

    async def _record(
        self, *, action: str, reason: str, outcome: str, details: dict[str, object]
    ) -> None:
        entry = AuditEntry(
            kind=AuditKind.POLICY,
            actor=self._actor,
            action=action,
            reason=reason,
            outcome=outcome,
            details=details,
        )
        await asyncio.to_thread(self._audit.record, entry)
