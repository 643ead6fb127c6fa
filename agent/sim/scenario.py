"""Fault scenarios for the simulated backend: a YAML list of timed faults, and its player.

```yaml
- {at: 5, gpu: 3, fault: xid, xid: 79}
- {at: 5.2, gpu: 3, fault: gpu_lost}
- {at: 60, gpu: 3, fault: clear}
```
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
import yaml

from agent.sim.fake_pynvml import FAULT_KINDS
from gpuwarden_common import logs

log = structlog.get_logger(__name__)

_FIELDS = ("at", "gpu", "fault", "xid")


class ScenarioError(ValueError):
    """A scenario file that cannot be played; the message names file, step and field."""


@dataclass(frozen=True)
class ScenarioStep:
    at: float  # seconds after the player starts
    gpu: int
    fault: str
    xid: int | None = None


class FaultInjector(Protocol):
    def inject(self, gpu: int, fault: str, xid: int | None = None) -> None: ...


def load_scenario(path: str | Path, *, gpu_count: int | None = None) -> list[ScenarioStep]:
    """Read and check a scenario file; steps come back sorted by time.

    ``gpu_count`` (when known) also rejects steps for GPUs the node does not have.
    """
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from exc
    if not isinstance(document, list):
        kind = type(document).__name__
        raise ScenarioError(f"{path}: expected a list of steps, found {kind}")
    steps = [_step(path, number, raw, gpu_count) for number, raw in enumerate(document, 1)]
    return sorted(steps, key=lambda s: s.at)


def _step(path: Path, number: int, raw: object, gpu_count: int | None) -> ScenarioStep:
    def bad(field: str, reason: str) -> ScenarioError:
        return ScenarioError(f"{path}: step {number}: field '{field}': {reason}")

    if not isinstance(raw, dict):
        raise ScenarioError(
            f"{path}: step {number}: expected a mapping like "
            f"{{at: 5, gpu: 0, fault: thermal}}, found {type(raw).__name__}"
        )
    for key in raw:
        if key not in _FIELDS:
            raise bad(str(key), f"unknown field; the fields are {', '.join(_FIELDS)}")
    for required in ("at", "gpu", "fault"):
        if required not in raw:
            raise bad(required, "missing")

    at = raw["at"]
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise bad("at", f"must be a number of seconds >= 0, got {at!r}")

    gpu = raw["gpu"]
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise bad("gpu", f"must be a GPU index >= 0, got {gpu!r}")
    if gpu_count is not None and gpu >= gpu_count:
        raise bad("gpu", f"GPU {gpu} does not exist: the node has {gpu_count}")

    fault = raw["fault"]
    if fault not in FAULT_KINDS:
        raise bad("fault", f"unknown fault {fault!r}; one of {', '.join(FAULT_KINDS)}")

    xid = raw.get("xid")
    if fault == "xid":
        if isinstance(xid, bool) or not isinstance(xid, int) or xid <= 0:
            raise bad("xid", f"fault 'xid' needs an XID code > 0, got {xid!r}")
    elif xid is not None:
        raise bad("xid", f"only fault 'xid' takes an XID code, not {fault!r}")
    return ScenarioStep(at=float(at), gpu=gpu, fault=fault, xid=xid)


class ScenarioPlayer:
    """Plays steps into a fake NVML at their times (monotonic clock), on a daemon thread.

    ``on_step`` hears about each step after it was applied (the demo logs it).
    """

    def __init__(
        self,
        fake: FaultInjector,
        steps: Sequence[ScenarioStep],
        *,
        on_step: Callable[[ScenarioStep], None] | None = None,
    ) -> None:
        self._fake = fake
        self._steps = sorted(steps, key=lambda s: s.at)
        self._on_step = on_step
        self._stop = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("ScenarioPlayer.start() called twice")
        self._thread = threading.Thread(
            target=logs.in_this_context(self._play), args=(time.monotonic(),), name="scenario",
            daemon=True,
        )
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def wait(self, timeout_s: float | None = None) -> bool:
        """True once every step was played."""
        return self._done.wait(timeout_s)

    def _play(self, t0: float) -> None:
        for step in self._steps:
            if self._stop.wait(max(0.0, t0 + step.at - time.monotonic())):
                return
            try:
                self._fake.inject(step.gpu, step.fault, step.xid)
            except Exception:
                log.exception("scenario_step_failed", step=repr(step))
                continue
            log.info("scenario_step", at=step.at, gpu=step.gpu, fault=step.fault, xid=step.xid)
            if self._on_step is not None:
                try:
                    self._on_step(step)
                except Exception:
                    log.exception("scenario_callback_failed", step=repr(step))
        self._done.set()
