"""The simulated GPU backend: a fake ``pynvml`` and scripted fault scenarios for the demo."""

from agent.sim.fake_pynvml import FAULT_KINDS, FakeNvml
from agent.sim.scenario import ScenarioError, ScenarioPlayer, ScenarioStep, load_scenario

__all__ = [
    "FAULT_KINDS",
    "FakeNvml",
    "ScenarioError",
    "ScenarioPlayer",
    "ScenarioStep",
    "load_scenario",
]
