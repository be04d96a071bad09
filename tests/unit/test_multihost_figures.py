"""The figures of the multi-host test's table, from samples made up here: what "calls per
full sweep" and "recovery" count (tests/support/multihost.py)."""

from __future__ import annotations

import pytest

from tests.support.multihost import ProviderSample, Sample, Window, calls_per_sweep, peak_staleness, recovery


def sample(at: float, *, active: int = 1000, staleness: float = 20.0, calls: int = 0, ids: int = 0) -> Sample:
    return Sample(at, {"p": ProviderSample(active, staleness, calls, ids, 1)}, 0, 0)


def test_calls_per_sweep_is_the_calls_over_the_passes_their_ids_made() -> None:
    # 1,000 active orders, two full passes of 100-ID calls: 10 calls a sweep.
    samples = [sample(0.0), sample(30.0, calls=10, ids=1000), sample(60.0, calls=20, ids=2000)]
    figure = calls_per_sweep(samples, Window("w", 0.0, 60.0), "p")
    assert figure is not None
    assert figure.calls_per_sweep == pytest.approx(10.0)
    assert figure.bound == pytest.approx(10.5)
    assert figure.within


def test_half_empty_calls_cost_twice_the_calls_a_sweep() -> None:
    samples = [sample(0.0), sample(30.0, calls=20, ids=1000)]
    figure = calls_per_sweep(samples, Window("w", 0.0, 30.0), "p")
    assert figure is not None and figure.calls_per_sweep == pytest.approx(20.0)
    assert not figure.within


def test_a_window_without_calls_measures_nothing() -> None:
    assert calls_per_sweep([sample(0.0), sample(10.0)], Window("w", 0.0, 10.0), "p") is None


def test_recovery_ends_after_the_last_late_sample() -> None:
    samples = [sample(0.0), sample(10.0, staleness=50.0), sample(20.0, staleness=60.0), sample(30.0), sample(40.0)]
    assert recovery(samples, since=5.0, until=40.0, stale_after=45.0) == pytest.approx(25.0)
    assert peak_staleness(samples, 5.0, 40.0) == 60.0


def test_no_late_sample_is_no_recovery_time_and_late_to_the_end_is_none() -> None:
    assert recovery([sample(0.0), sample(10.0)], since=0.0, until=10.0, stale_after=45.0) == 0.0
    assert recovery([sample(0.0), sample(10.0, staleness=50.0)], since=0.0, until=10.0, stale_after=45.0) is None
