"""A public path kept from before the slices: ``TRACKER_COUNT_PROBE`` settings written as
``tracker.probes.sim_count_probe`` keep working. The code lives in
``tracker.refills.count_source``."""

from tracker.refills.count_source import ProbeTarget, load_count_probe, sim_count_probe

__all__ = ["ProbeTarget", "load_count_probe", "sim_count_probe"]
