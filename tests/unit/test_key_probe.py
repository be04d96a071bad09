"""The back-off between probes of a provider paused for a rejected API key. Pure."""

from __future__ import annotations

import pytest

from tracker.config import ConfigError, Settings
from tracker.core.health import key_probe_delay


def test_key_probes_start_after_a_minute_and_double_up_to_thirty_minutes() -> None:
    delays = [key_probe_delay(failures, base=60, cap=1800) for failures in range(8)]
    assert delays == [60, 120, 240, 480, 960, 1800, 1800, 1800]


def test_a_million_rejections_keep_the_delay_at_the_cap_without_overflow() -> None:
    assert key_probe_delay(10**6, base=60, cap=1800) == 1800
    assert key_probe_delay(10**18, base=1, cap=4) == 4


def test_a_negative_count_is_read_as_none() -> None:
    assert key_probe_delay(-5, base=60, cap=1800) == 60


def test_a_cap_below_the_base_never_shortens_the_first_probe() -> None:
    assert key_probe_delay(0, base=60, cap=30) == 60
    assert key_probe_delay(9, base=60, cap=30) == 60


def test_the_probe_settings_default_to_one_and_thirty_minutes() -> None:
    settings = Settings.from_env({})
    assert (settings.key_probe_base, settings.key_probe_cap) == (60.0, 1800.0)
    shrunk = Settings.from_env({"TRACKER_KEY_PROBE_BASE": "1", "TRACKER_KEY_PROBE_CAP": "4"})
    assert (shrunk.key_probe_base, shrunk.key_probe_cap) == (1.0, 4.0)


@pytest.mark.parametrize("name", ["TRACKER_KEY_PROBE_BASE", "TRACKER_KEY_PROBE_CAP"])
def test_a_probe_setting_that_is_not_a_positive_number_is_refused_by_name(name: str) -> None:
    for bad in ("soon", "0"):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: bad})
