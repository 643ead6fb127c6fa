"""Runs every check on a sample, each under a deadline, and never lets one stop the others.

The checks run one after another on a single worker thread while the caller watches the
clock: one hand-off per sample keeps a healthy run cheap. When a check overruns its deadline
the caller reports it ``CHECK-TIMEOUT``, gives that worker up to the hung call, and starts a
fresh worker for the rest of the batch. A hung check is not called again until its abandoned
call returns, so each hung check holds at most one thread, however long it hangs.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from agent.checks.base import Check, CheckResult
from agent.sample import NodeSample
from gpuwarden_common.health import Finding, Severity

_MAX_ERROR = 900


def unknown_result(check: str, code: str, error: str, duration_s: float) -> CheckResult:
    """A check that could not answer: its node is of unknown health, not broken."""
    error = error[:_MAX_ERROR]
    finding = Finding(
        check=check, severity=Severity.WARNING, code=code, message=error, unknown=True
    )
    return CheckResult(check=check, findings=(finding,), duration_s=duration_s, error=error)


@dataclass
class _Batch:
    sample: NodeSample
    checks: Sequence[Check]
    results: list[CheckResult | None]
    cond: threading.Condition = field(default_factory=threading.Condition)
    next: int = 0
    # (position, monotonic start) of the check on the worker now; None between checks
    running: tuple[int, float] | None = None

    @property
    def done(self) -> bool:
        return self.next >= len(self.checks) and self.running is None


class _Worker:
    _ids = itertools.count(1)

    def __init__(self, runner: CheckRunner) -> None:
        self.inbox: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self.abandoned = False
        self._runner = runner
        self._thread = threading.Thread(
            target=self._loop, name=f"gpuwarden-checks-{next(self._ids)}", daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while (batch := self.inbox.get()) is not None:
            if not self._work(batch):
                return

    def _work(self, batch: _Batch) -> bool:
        """Run the batch's remaining checks; False when this worker was given up meanwhile."""
        while True:
            with batch.cond:
                if self.abandoned:
                    return False
                if batch.next >= len(batch.checks):
                    batch.cond.notify_all()
                    return True
                position = batch.next
                batch.next += 1
                started = time.monotonic()
                batch.running = (position, started)
            check = batch.checks[position]
            result = _call(check, batch.sample, started)
            with batch.cond:
                if self.abandoned:
                    # reported CHECK-TIMEOUT already: the late answer is stale, drop it
                    self._runner._release(check.name)
                    return False
                batch.results[position] = result
                batch.running = None


def _call(check: Check, sample: NodeSample, started: float) -> CheckResult | None:
    """One check's result; None when the check does not apply to this node."""
    begun = time.perf_counter()
    try:
        if not check.is_supported(sample):
            return None
        findings = tuple(check.check(sample))
    except Exception as exc:  # a check must never take the agent down
        return unknown_result(
            check.name,
            "CHECK-ERROR",
            f"check {check.name} failed: {type(exc).__name__}: {exc}",
            time.perf_counter() - begun,
        )
    return CheckResult(check=check.name, findings=findings, duration_s=time.perf_counter() - begun)


class CheckRunner:
    """Not thread-safe: one caller (the agent's poll loop) calls :meth:`run` at a time."""

    def __init__(self, checks: Sequence[Check], timeout_s: float = 2.0) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        names = [c.name for c in checks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"check names must be unique: {', '.join(duplicates)}")
        self._checks = tuple(checks)
        self._timeout_s = timeout_s
        self._hung_lock = threading.Lock()
        self._hung: dict[str, float] = {}  # name -> monotonic time its call started
        self._worker: _Worker | None = None

    @property
    def checks(self) -> tuple[Check, ...]:
        return self._checks

    @property
    def hung(self) -> frozenset[str]:
        """Checks whose last call overran its deadline and has not returned yet."""
        with self._hung_lock:
            return frozenset(self._hung)

    def run(self, sample: NodeSample) -> list[CheckResult]:
        """One result per supported check, in the order the checks were given."""
        now = time.monotonic()
        with self._hung_lock:
            hung = dict(self._hung)
        still_hung = {
            c.name: unknown_result(
                c.name,
                "CHECK-TIMEOUT",
                f"check {c.name} still running after {now - hung[c.name]:.1f} s"
                " (its earlier call has not returned; not called again)",
                0.0,
            )
            for c in self._checks
            if c.name in hung
        }
        runnable = [c for c in self._checks if c.name not in still_hung]
        fresh: dict[str, CheckResult] = {}
        if runnable:
            batch = _Batch(sample=sample, checks=runnable, results=[None] * len(runnable))
            self._watch(batch)
            fresh = {r.check: r for r in batch.results if r is not None}
        ordered = (still_hung.get(c.name) or fresh.get(c.name) for c in self._checks)
        return [r for r in ordered if r is not None]

    def close(self) -> None:
        """Let the idle worker exit (an abandoned one ends when its hung call returns)."""
        if self._worker is not None:
            self._worker.inbox.put(None)
            self._worker = None

    def _watch(self, batch: _Batch) -> None:
        self._worker_for().inbox.put(batch)
        with batch.cond:
            while not batch.done:
                if batch.running is None:
                    # between checks or not picked up yet; the worker notifies when done
                    batch.cond.wait(self._timeout_s)
                    continue
                position, started = batch.running
                left = started + self._timeout_s - time.monotonic()
                if left > 0:
                    batch.cond.wait(left)
                    continue
                self._abandon(batch, position, started)

    def _abandon(self, batch: _Batch, position: int, started: float) -> None:
        """Called holding ``batch.cond``: give the worker up to its hung check, carry on."""
        check = batch.checks[position]
        with self._hung_lock:
            self._hung[check.name] = started
        elapsed = time.monotonic() - started
        batch.results[position] = unknown_result(
            check.name,
            "CHECK-TIMEOUT",
            f"check {check.name} did not finish within {self._timeout_s:g} s",
            elapsed,
        )
        batch.running = None
        assert self._worker is not None
        self._worker.abandoned = True
        self._worker = None
        self._worker_for().inbox.put(batch)

    def _worker_for(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self)
        return self._worker

    def _release(self, name: str) -> None:
        with self._hung_lock:
            self._hung.pop(name, None)
