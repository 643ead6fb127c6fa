"""Agent node names <-> Slurm NodeNames.

An agent names its node by host name; Slurm by the ``NodeName`` of slurm.conf. They are the
same on most clusters; where they differ (``gpu-a-001.cluster.internal`` vs ``a001``),
``--slurm-node-map FILE`` says so, one ``agent-name: slurm-name`` line each (YAML), and
every name not in it is the same on both sides.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import yaml


class NodeMapError(ValueError):
    """The map file is unusable; the message names the file and what to fix."""


class NodeNames:
    def __init__(self, agent_to_slurm: Mapping[str, str] | None = None) -> None:
        self._to_slurm = dict(agent_to_slurm or {})
        self._to_agent = {slurm: agent for agent, slurm in self._to_slurm.items()}
        if len(self._to_agent) != len(self._to_slurm):
            raise NodeMapError("two agent names map to one Slurm node; each needs its own")

    def slurm(self, agent: str) -> str:
        return self._to_slurm.get(agent, agent)

    def agent(self, slurm: str) -> str:
        return self._to_agent.get(slurm, slurm)

    def __len__(self) -> int:
        return len(self._to_slurm)

    @classmethod
    def load(cls, path: Path) -> NodeNames:
        try:
            data = yaml.safe_load(path.read_text())
        except OSError as exc:
            raise NodeMapError(f"{path}: cannot read it ({exc})") from None
        except yaml.YAMLError as exc:
            raise NodeMapError(f"{path}: not YAML ({exc}); write one "
                               "'agent-name: slurm-name' line per node") from None  # fmt: skip
        if data is None:
            data = {}
        if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v for k, v in data.items()
        ):
            raise NodeMapError(f"{path}: expected 'agent-name: slurm-name' lines, both names "
                               "non-empty text")  # fmt: skip
        try:
            return cls(data)
        except NodeMapError as exc:
            raise NodeMapError(f"{path}: {exc}") from None
