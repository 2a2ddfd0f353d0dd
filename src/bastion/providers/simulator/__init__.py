"""A provider simulator speaking the OpenAI and Anthropic HTTP APIs, for tests, demos,
benchmarks and chaos runs: deterministic content, latency, pacing and injected faults.

Model names choose a variant: ``sim-small``, ``sim-large`` or any name, followed by options
that override the server's config for that request, e.g. ``sim-small~quality=bad``,
``sim-small~error_rate=0.3~faults=500,429``, ``sim-large~latency_ms=200~tps=50``;
``sim-small~safety=refuse`` refuses everything and ``sim-small~safety=leak`` repeats its whole
prompt back (red-team targets that resist and that leak).
"""

from bastion.providers.simulator.app import SIMULATOR, create_simulator_app
from bastion.providers.simulator.config import (
    FAULTS,
    SimulatorConfig,
    SimulatorConfigError,
    parse_model,
)
from bastion.providers.simulator.server import SimulatorServer, run_simulator

__all__ = [
    "FAULTS",
    "SIMULATOR",
    "SimulatorConfig",
    "SimulatorConfigError",
    "SimulatorServer",
    "create_simulator_app",
    "parse_model",
    "run_simulator",
]
