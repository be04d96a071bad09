"""The one factory of the tracker's Redis clients: plain URLs, Celery's ``sentinel://`` form
(read as kombu reads it), the settings that go with it, and that nothing else in the
package builds a Redis client. Nothing here connects anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from redis.sentinel import SentinelConnectionPool

import tracker
from tracker.config import DEFAULT_FAILOVER_PAUSE, DEFAULT_SENTINEL_MASTER, ConfigError, Settings
from tracker.redis_clients import (
    NotARedisURL,
    SentinelURL,
    broker_transport_options,
    is_sentinel_url,
    parse_sentinel_url,
    redis_client,
)

PACKAGE_ROOT = Path(tracker.__file__).parent
THREE = "sentinel://:s3cret@10.0.0.1:26379/3;sentinel://10.0.0.2:26380;sentinel://sentinel-c"


def test_a_sentinel_url_names_every_sentinel_and_the_masters_database_and_password() -> None:
    parsed = parse_sentinel_url(THREE)
    assert parsed == SentinelURL(
        sentinels=(("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)), db=3, password="s3cret"
    )
    assert "s3cret" not in repr(parsed)
    assert parse_sentinel_url("sentinel://user:pa%3Ass@h:1").username == "user"
    assert parse_sentinel_url("sentinel://user:pa%3Ass@h:1").password == "pa:ss"
    assert parse_sentinel_url("sentinel://h:1;").db == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sentinel://:s3cret@h:26379;redis://:s3cret@other:6379", "part 2 of a Sentinel URL is not sentinel://"),
        ("sentinel://:s3cret@h:port", "part 1 has a port that is not a number"),
        ("sentinel://:s3cret@h:26379/zero", "must be a number"),
        ("sentinel://:s3cret@:26379", "part 1 names no Sentinel host"),
        (" ; ", "no Sentinel address"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_repeating_it(url: str, says: str) -> None:
    with pytest.raises(NotARedisURL) as refused:
        parse_sentinel_url(url)
    assert says in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_a_url_of_no_redis_is_refused_without_repeating_it() -> None:
    with pytest.raises(NotARedisURL, match="redis://, rediss://, unix:// or sentinel://") as refused:
        redis_client("amqp://guest:s3cret@rabbit:5672//")
    assert "s3cret" not in str(refused.value)


def test_a_sentinel_url_gives_a_client_of_the_named_master() -> None:
    client = redis_client(THREE, master_name="shop-redis", sentinel_password="sentinel-pass", timeout=2)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "shop-redis"
    assert pool.connection_kwargs["db"] == 3
    assert pool.connection_kwargs["password"] == "s3cret"
    assert pool.connection_kwargs["socket_timeout"] == 2
    assert pool.connection_kwargs["retry"].get_retries() > 0
    sentinels = pool.proxy.sentinel_manager.sentinels
    assert [(node.connection_pool.connection_kwargs["host"], node.connection_pool.connection_kwargs["port"]) for node in sentinels] == [
        ("10.0.0.1", 26379), ("10.0.0.2", 26380), ("sentinel-c", 26379)
    ]
    assert all(node.connection_pool.connection_kwargs["password"] == "sentinel-pass" for node in sentinels)


def test_a_plain_url_gives_a_plain_client() -> None:
    client = redis_client("redis://:pw@cache:6380/4", timeout=1.5)
    assert not isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.connection_kwargs["db"] == 4
    assert client.connection_pool.connection_kwargs["socket_connect_timeout"] == 1.5
    assert not is_sentinel_url("redis://cache:6380/4")
    assert is_sentinel_url(" SENTINEL://h:1")


def test_the_sentinel_settings_and_what_kombu_is_told() -> None:
    plain = Settings.from_env({"TRACKER_BROKER_URL": "redis://cache:6379/0"})
    assert broker_transport_options(plain) == {}
    assert plain.sentinel_master == DEFAULT_SENTINEL_MASTER == "mymaster"
    assert plain.failover_pause == DEFAULT_FAILOVER_PAUSE

    sentinel = Settings.from_env({"TRACKER_BROKER_URL": THREE, "TRACKER_SENTINEL_MASTER": "shop-redis"})
    assert broker_transport_options(sentinel) == {"master_name": "shop-redis"}
    guarded = Settings.from_env(
        {"TRACKER_BROKER_URL": THREE, "TRACKER_SENTINEL_PASSWORD": "sentinel-pass", "TRACKER_FAILOVER_PAUSE": "30"}
    )
    assert broker_transport_options(guarded) == {
        "master_name": "mymaster",
        "sentinel_kwargs": {"password": "sentinel-pass"},
    }
    assert guarded.failover_pause == 30
    assert "sentinel-pass" not in repr(guarded)
    with pytest.raises(ConfigError, match="TRACKER_FAILOVER_PAUSE must be at least 1"):
        Settings.from_env({"TRACKER_FAILOVER_PAUSE": "0.5"})


def test_the_celery_app_passes_the_master_name_to_kombu(monkeypatch: pytest.MonkeyPatch) -> None:
    from tracker.config import reset_settings
    from tracker.worker.app import build_config

    monkeypatch.setenv("TRACKER_BROKER_URL", THREE)
    monkeypatch.setenv("TRACKER_SENTINEL_MASTER", "shop-redis")
    reset_settings()
    try:
        config = build_config()
    finally:
        monkeypatch.undo()
        reset_settings()
    assert config["broker_url"] == THREE
    assert config["broker_transport_options"]["master_name"] == "shop-redis"
    # The options the tracker sets for any Redis broker stay.
    assert config["broker_transport_options"]["queue_order_strategy"] == "priority"


# The bundled Redis' readiness probe talks to the server `tracker run` just started on
# loopback, never to the broker of a deployment.
FACTORY_EXEMPT = {PACKAGE_ROOT / "redis_clients.py", PACKAGE_ROOT / "ops" / "bundled_redis.py"}
CLIENT_CONSTRUCTORS = {"Redis", "StrictRedis", "from_url", "Sentinel"}


def _client_constructions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        function = node.func
        name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
        owner = function.value if isinstance(function, ast.Attribute) else None
        owner_name = ast.unparse(owner) if owner is not None else ""
        if name in CLIENT_CONSTRUCTORS and (name != "from_url" or "redis" in owner_name.lower()):
            found.append(f"{path.relative_to(PACKAGE_ROOT.parent)}:{node.lineno} {ast.unparse(function)}")
    return found


def test_every_redis_client_of_the_tracker_comes_from_the_factory() -> None:
    """So every one of them follows the master through Sentinel."""
    found = [
        construction
        for path in sorted(PACKAGE_ROOT.rglob("*.py"))
        if path not in FACTORY_EXEMPT
        for construction in _client_constructions(path)
    ]
    assert found == []
