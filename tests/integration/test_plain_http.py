"""Plain ``http://`` provider URLs send the API key in clear text. Outside local mode the
tracker refuses them, when a provider is added and when a worker is about to call one
stored before the rule, unless ``TRACKER_ALLOW_HTTP_PROVIDERS=1``. Loopback addresses
(the sim, a local tunnel) are fine in any mode."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from tests.conftest import TEST_API_KEY
from tracker.cli.main import main as tracker_cli
from tracker.config import get_settings, reset_settings
from tracker.db.models import Provider
from tracker.db.session import unit_of_work
from tracker.apiv2.errors import InsecureProviderURL
from tracker.providers.secrets import encrypt_api_key, key_hint
from tracker.sim import SimServer
from tracker.providers.gateway import Gateway, ProviderAccess

pytestmark = pytest.mark.integration

REMOTE = "http://panel.example/api/v2"


def _add(name: str, url: str) -> int:
    return tracker_cli(["provider", "add", name, "--url", url, "--key-env", "PANEL_KEY"])


def _names() -> list[str]:
    with unit_of_work() as session:
        return sorted(session.scalars(select(Provider.name)))


@pytest.fixture
def key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PANEL_KEY", TEST_API_KEY)
    return TEST_API_KEY


def _allow_http(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("TRACKER_ALLOW_HTTP_PROVIDERS", raising=False)
    else:
        monkeypatch.setenv("TRACKER_ALLOW_HTTP_PROVIDERS", value)
    reset_settings()


def test_provider_add_refuses_plain_http_in_production(
    tracker_env: dict[str, str], key: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert get_settings().mode == "production"
    assert _add("remote", REMOTE) == 1
    captured = capsys.readouterr()
    assert "plain http://" in captured.err and "panel.example" in captured.err
    assert "TRACKER_ALLOW_HTTP_PROVIDERS=1" in captured.err
    assert key not in captured.err + captured.out
    assert _names() == []

    # https, and loopback over http, are fine.
    assert _add("secure", "https://panel.example/api/v2") == 0
    for name, url in [
        ("v4", "http://127.0.0.1:8080/api/v2"),
        ("name", "http://localhost/api/v2"),
        ("v6", "http://[::1]:8080/api/v2"),
    ]:
        assert _add(name, url) == 0, capsys.readouterr().err
    # Moving an existing provider to plain http is refused too, and changes nothing.
    assert _add("secure", REMOTE) == 1
    assert "plain http://" in capsys.readouterr().err
    with unit_of_work() as session:
        stored = session.scalar(select(Provider.api_url).where(Provider.name == "secure"))
    assert stored == "https://panel.example/api/v2"

    # The operator's explicit opt-in.
    _allow_http(monkeypatch, "1")
    assert _add("remote", REMOTE) == 0
    assert _names() == ["name", "remote", "secure", "v4", "v6"]


def test_local_mode_accepts_plain_http(
    tracker_env: dict[str, str], key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACKER_MODE", "local")
    reset_settings()
    assert _add("remote", REMOTE) == 0


def test_a_bad_opt_in_value_is_a_clear_error(
    tracker_env: dict[str, str], key: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("TRACKER_ALLOW_HTTP_PROVIDERS", "maybe")
    reset_settings()
    assert _add("remote", REMOTE) == 1
    assert "TRACKER_ALLOW_HTTP_PROVIDERS" in capsys.readouterr().err


# --- at call time: a provider stored before the rule ----------------------------------


def _non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))
            address = str(probe.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


@pytest.fixture
def remote_sim() -> Iterator[tuple[SimServer, str]]:
    """The sim on every interface, and its URL through a non-loopback address."""
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    with SimServer("0.0.0.0", api_key=TEST_API_KEY) as sim:
        yield sim, f"http://{address}:{sim.port}/api/v2"


def _stored_before_the_rule(url: str) -> ProviderAccess:
    """A provider row written directly, as an older version of the tracker did."""
    settings = get_settings()
    now = datetime.now(UTC)
    with unit_of_work() as session:
        provider = Provider(
            name="legacy", api_url=url, api_key_encrypted=encrypt_api_key(settings, TEST_API_KEY),
            key_hint=key_hint(TEST_API_KEY), created_at=now, updated_at=now,
        )
        session.add(provider)
        session.flush()
        return ProviderAccess.of(provider, settings)


def _status_calls(sim: SimServer) -> int:
    return int(sim.stats()["actions"].get("status", {}).get("calls", 0))


def test_worker_refuses_to_send_the_key_over_plain_http(
    tracker_env: dict[str, str], remote_sim: tuple[SimServer, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sim, url = remote_sim
    [order] = sim.seed_orders(1, age_s=3000)
    access = _stored_before_the_rule(url)
    gateway = Gateway(get_settings(), None)
    try:
        with pytest.raises(InsecureProviderURL) as caught:
            gateway.client(access).status_multi([order])
    finally:
        gateway.close()
    error = caught.value
    assert error.action == "status"
    assert "plain http://" in str(error) and "TRACKER_ALLOW_HTTP_PROVIDERS=1" in str(error)
    assert TEST_API_KEY not in str(error) + repr(error) + json.dumps(error.args)
    assert _status_calls(sim) == 0  # nothing reached the provider

    # With the opt-in the same provider is called.
    _allow_http(monkeypatch, "1")
    gateway = Gateway(get_settings(), None)
    try:
        assert set(gateway.client(access).status_multi([order])) == {order}
    finally:
        gateway.close()
    assert _status_calls(sim) == 1


def test_provider_sync_refuses_plain_http(
    tracker_env: dict[str, str], remote_sim: tuple[SimServer, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim, url = remote_sim
    _stored_before_the_rule(url)
    assert tracker_cli(["provider", "sync", "legacy"]) == 1
    captured = capsys.readouterr()
    assert "plain http://" in captured.err
    assert TEST_API_KEY not in captured.err + captured.out
    assert sim.stats()["actions"] == {} or all(
        entry.get("calls", 0) == 0 for entry in sim.stats()["actions"].values()
    )
