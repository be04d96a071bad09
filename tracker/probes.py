"""A public path kept from before the slices: ``TRACKER_COUNT_PROBE`` settings written as
``tracker.probes.sim_count_probe``, and plug-ins importing ``ProbeTarget`` from here, keep
working. The code lives in ``tracker.refills.count_probe_plugins``."""

from tracker.refills.count_probe_plugins import (
    PROBE_TIMEOUT,
    CountProbe,
    ProbeConfigError,
    ProbeTarget,
    load_count_probe,
    sim_count_probe,
)

__all__ = ["PROBE_TIMEOUT", "CountProbe", "ProbeConfigError", "ProbeTarget", "load_count_probe", "sim_count_probe"]
