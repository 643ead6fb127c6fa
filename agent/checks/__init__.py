"""The agent's health checks: one per module, all listed once in :data:`ALL_CHECKS`.

:func:`default_checks` builds them from the XID table and history and one frozen
:class:`ChecksConfig`; the daemon hands the result to :class:`agent.checks.runner.CheckRunner`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from agent.checks.base import Check, CheckResult
from agent.checks.clocks import ClocksCheck, ClocksConfig
from agent.checks.ecc import EccCheck, EccConfig
from agent.checks.gpu_lost import GpuLostCheck, GpuLostConfig
from agent.checks.host import HostCheck, HostConfig
from agent.checks.nvlink import NvLinkCheck, NvLinkConfig
from agent.checks.pcie import PcieCheck, PcieConfig
from agent.checks.power import PowerCheck, PowerConfig
from agent.checks.remap import RemapCheck, RemapConfig
from agent.checks.thermal import ThermalCheck, ThermalConfig
from agent.checks.xid import XidCheck, XidConfig
from agent.xid_table import XidHistory, XidTable


@dataclass(frozen=True)
class ChecksConfig:
    """Thresholds of every check, and the checks to leave out (by name)."""

    disabled: frozenset[str] = frozenset()
    xid: XidConfig = field(default_factory=XidConfig)
    ecc: EccConfig = field(default_factory=EccConfig)
    remap: RemapConfig = field(default_factory=RemapConfig)
    thermal: ThermalConfig = field(default_factory=ThermalConfig)
    power: PowerConfig = field(default_factory=PowerConfig)
    clocks: ClocksConfig = field(default_factory=ClocksConfig)
    pcie: PcieConfig = field(default_factory=PcieConfig)
    nvlink: NvLinkConfig = field(default_factory=NvLinkConfig)
    gpu_lost: GpuLostConfig = field(default_factory=GpuLostConfig)
    host: HostConfig = field(default_factory=HostConfig)


@dataclass(frozen=True)
class CheckSpec:
    name: str
    build: Callable[[ChecksConfig, XidTable, XidHistory], Check]


ALL_CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("gpu_lost", lambda c, _t, _h: GpuLostCheck(c.gpu_lost)),
    CheckSpec("xid", lambda c, table, history: XidCheck(table, history, c.xid)),
    CheckSpec("ecc", lambda c, _t, _h: EccCheck(c.ecc)),
    CheckSpec("remap", lambda c, _t, _h: RemapCheck(c.remap)),
    CheckSpec("thermal", lambda c, _t, _h: ThermalCheck(c.thermal)),
    CheckSpec("power", lambda c, _t, _h: PowerCheck(c.power)),
    CheckSpec("clocks", lambda c, _t, _h: ClocksCheck(c.clocks)),
    CheckSpec("pcie", lambda c, _t, _h: PcieCheck(c.pcie)),
    CheckSpec("nvlink", lambda c, _t, _h: NvLinkCheck(c.nvlink)),
    CheckSpec("host", lambda c, _t, _h: HostCheck(c.host)),
)
CHECK_NAMES: tuple[str, ...] = tuple(spec.name for spec in ALL_CHECKS)


def default_checks(
    table: XidTable | None = None,
    history: XidHistory | None = None,
    config: ChecksConfig | None = None,
) -> tuple[Check, ...]:
    """Every check not disabled in ``config``.

    ``table``: the XID table (None: the packaged default; the daemon loads it once, since it
    also classifies XID events). ``history``: the escalation history (None: in memory only).
    Unknown names in ``config.disabled`` raise ValueError.
    """
    config = config or ChecksConfig()
    unknown = sorted(config.disabled - set(CHECK_NAMES))
    if unknown:
        raise ValueError(
            f"unknown check(s) to disable: {', '.join(unknown)} (known: {', '.join(CHECK_NAMES)})"
        )
    table = table or XidTable.load()
    history = history or XidHistory(None)
    return tuple(
        spec.build(config, table, history)
        for spec in ALL_CHECKS
        if spec.name not in config.disabled
    )


__all__ = [
    "ALL_CHECKS",
    "CHECK_NAMES",
    "Check",
    "CheckResult",
    "CheckSpec",
    "ChecksConfig",
    "default_checks",
]
