"""Where a local install's commands find the broker that `tracker run` started."""

from __future__ import annotations

from pathlib import Path

from tracker.config import DEFAULT_BROKER_URL, Settings
from tracker.ops.runner import publish_broker_url, withdraw_broker_url

BUNDLED = "redis://127.0.0.1:40123/0"


def settings(state_dir: Path, **env: str) -> Settings:
    return Settings.from_env({"TRACKER_STATE_DIR": str(state_dir), **env})


def test_without_the_file_the_default_broker(tmp_path: Path) -> None:
    assert settings(tmp_path).broker_url == DEFAULT_BROKER_URL


def test_the_published_url_is_used_while_tracker_run_runs(tmp_path: Path) -> None:
    publish_broker_url(tmp_path, BUNDLED)
    assert settings(tmp_path).broker_url == BUNDLED
    # `tracker run` still decides by the variable alone whether to start its own Redis.
    assert settings(tmp_path).broker_url_setting is None
    withdraw_broker_url(tmp_path, BUNDLED)
    assert settings(tmp_path).broker_url == DEFAULT_BROKER_URL


def test_the_variable_wins_over_the_file(tmp_path: Path) -> None:
    publish_broker_url(tmp_path, BUNDLED)
    configured = settings(tmp_path, TRACKER_BROKER_URL="redis://redis.internal:6379/2")
    assert configured.broker_url == "redis://redis.internal:6379/2"


def test_an_empty_file_is_ignored_and_another_runs_file_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "broker-url").write_text("\n")
    assert settings(tmp_path).broker_url == DEFAULT_BROKER_URL
    publish_broker_url(tmp_path, "redis://127.0.0.1:40999/0")
    withdraw_broker_url(tmp_path, BUNDLED)
    assert settings(tmp_path).broker_url == "redis://127.0.0.1:40999/0"
