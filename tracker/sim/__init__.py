"""A simulated API v2 provider (SMM panel) served over real HTTP.

``SimServer`` runs it inside a process (tests); ``tracker sim`` runs it from the command
line (``tracker.sim.cli.run_sim``); ``SimAdmin`` drives a sim running elsewhere through
its admin API. The pure order model is in ``tracker.sim.model``.
"""

from tracker.sim.admin import SimAdmin, SimAdminError
from tracker.sim.provider import SimConfig
from tracker.sim.server import SimServer

__all__ = ["SimAdmin", "SimAdminError", "SimConfig", "SimServer"]
