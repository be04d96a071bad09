"""Which driver a TRACKER_DATABASE_URL means, and URLs the tracker cannot use."""

from __future__ import annotations

import pytest

from tracker.config import ConfigError, Settings, normalize_database_url


@pytest.mark.parametrize(
    ("given", "meant"),
    [
        ("postgresql://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgres://u@h/db", "postgresql+psycopg://u@h/db"),
        ("mysql://u:p@h:3306/db", "mysql+pymysql://u:p@h:3306/db"),
        ("mariadb://u@h/db", "mysql+pymysql://u@h/db"),
        ("mariadb+pymysql://u@h/db", "mysql+pymysql://u@h/db"),
        ("mysql+pymysql://u@h/db?charset=utf8mb4", "mysql+pymysql://u@h/db?charset=utf8mb4"),
        ("sqlite:///tracker.db", "sqlite:///tracker.db"),
    ],
)
def test_a_plain_url_means_the_installed_driver(given: str, meant: str) -> None:
    assert normalize_database_url(given) == meant
    assert Settings.from_env({"TRACKER_DATABASE_URL": given}).database_url == meant


def test_a_mysql_url_is_production_mode() -> None:
    assert Settings.from_env({"TRACKER_DATABASE_URL": "mysql://u@h/db"}).mode == "production"


def test_a_mysql_driver_the_tracker_does_not_install_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=r"TRACKER_DATABASE_URL.*'mysqldb'.*mysql\+pymysql://"):
        Settings.from_env({"TRACKER_DATABASE_URL": "mysql+mysqldb://u@h/db"})


def test_a_soft_time_limit_too_short_for_one_provider_call_is_refused() -> None:
    """A task starts no call that could outlast its soft limit: with no room for one, no
    order would ever be polled. The default call may take 45 s, plus 2 s to write."""
    with pytest.raises(ConfigError, match=r"TRACKER_TASK_SOFT_TIME_LIMIT \(30 s\).*one provider call.*at least 47 s"):
        Settings.from_env({"TRACKER_TASK_SOFT_TIME_LIMIT": "30", "TRACKER_TASK_TIME_LIMIT": "40"})
    settings = Settings.from_env(
        {"TRACKER_TASK_SOFT_TIME_LIMIT": "30", "TRACKER_TASK_TIME_LIMIT": "40", "TRACKER_HTTP_DEADLINE": "20",
         "TRACKER_HTTP_READ_TIMEOUT": "15"}
    )
    assert settings.provider_try_seconds == 20


def test_a_soft_time_limit_too_short_for_one_webhook_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"no room for one webhook delivery.*TRACKER_WEBHOOK_TIMEOUT"):
        Settings.from_env(
            {"TRACKER_TASK_SOFT_TIME_LIMIT": "50", "TRACKER_TASK_TIME_LIMIT": "60", "TRACKER_WEBHOOK_TIMEOUT": "40",
             "TRACKER_WEBHOOK_URL": "https://shop.test/hook"}
        )
