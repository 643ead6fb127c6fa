"""The optional price table of ``--prices``: what a GPU-hour costs on each instance type.

YAML (or JSON)::

    currency: USD
    instanceTypes:
      p5.48xlarge: {perInstanceHour: 98.32, gpusPerInstance: 8}
      p4d.24xlarge: {perGpuHour: 4.10}

Cost follows allocation: a team pays for the GPUs it holds, busy or idle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class PricesError(ValueError):
    pass


@dataclass(frozen=True)
class Prices:
    currency: str
    per_gpu_hour: Mapping[str, float]

    def cost(self, instance_type: str, gpu_hours: float) -> float | None:
        price = self.per_gpu_hour.get(instance_type)
        return None if price is None else gpu_hours * price


def parse_prices(data: Any, source: str = "<prices>") -> Prices:
    if not isinstance(data, dict) or not isinstance(data.get("instanceTypes"), dict):
        raise PricesError(f"{source}: expected a mapping with 'instanceTypes:' (see "
                          "docs/operations.md, Reports)")  # fmt: skip
    out: dict[str, float] = {}
    for itype, spec in data["instanceTypes"].items():
        where = f"{source}: instanceTypes.{itype}"
        if not isinstance(spec, dict):
            raise PricesError(f"{where}: expected perGpuHour, or perInstanceHour and "
                              "gpusPerInstance")  # fmt: skip
        try:
            if "perGpuHour" in spec:
                price = float(spec["perGpuHour"])
            else:
                price = float(spec["perInstanceHour"]) / int(spec["gpusPerInstance"])
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            raise PricesError(f"{where}: expected perGpuHour (a number), or perInstanceHour "
                              "and gpusPerInstance (a whole number above 0)") from None
        if price < 0:
            raise PricesError(f"{where}: a price cannot be negative")
        out[str(itype)] = price
    return Prices(str(data.get("currency", "")), out)


def load_prices(path: str | Path) -> Prices:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise PricesError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        return parse_prices(yaml.safe_load(text), str(path))
    except yaml.YAMLError as exc:
        raise PricesError(f"{path}: not YAML or JSON ({exc})") from None
