"""docker-compose.yml, checked as data: `docker compose config` needs Docker, which the
test machines do not have, so the structure the deployment relies on is checked here
(services, healthchecks, secrets only from the environment, migrations first)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
SERVICES = {"redis", "postgres", "migrate", "worker", "beat", "flower", "exporter"}
LONG_RUNNING = SERVICES - {"migrate"}
TRACKER_SERVICES = ("worker", "beat", "flower", "exporter")
SECRETS = ("POSTGRES_PASSWORD", "TRACKER_SECRET_KEY", "FLOWER_BASIC_AUTH")
# ${NAME:?message}: compose refuses to start when NAME is unset or empty.
REQUIRED = r"\$\{(?P<name>[A-Z_][A-Z0-9_]*):\?[^}]*\}"
# user:password@ inside a URL.
URL_CREDENTIALS = re.compile(r"://[^:/@\s]+:(?P<password>[^@\s]*)@")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    # PyYAML's safe loader resolves the `<<: *tracker` merge keys, as compose does.
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    return dict(document["services"])


def environment_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment", {})
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment)
    return {str(name): str(value) for name, value in environment.items()}


def command_text(value: Any) -> str:
    return " ".join(value) if isinstance(value, list) else str(value)


def test_the_services_are_all_there(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == SERVICES


@pytest.mark.parametrize("name", sorted(LONG_RUNNING))
def test_long_running_services_have_a_healthcheck(services: dict[str, dict[str, Any]], name: str) -> None:
    check = services[name].get("healthcheck")
    assert check and check.get("test"), f"{name} has no healthcheck"
    assert not check.get("disable", False)
    assert services[name].get("restart") == "unless-stopped"


def test_the_worker_is_checked_with_celery_inspect_ping(services: dict[str, dict[str, Any]]) -> None:
    test = command_text(services["worker"]["healthcheck"]["test"])
    assert re.search(r"\bcelery\b.*\binspect ping\b", test), test
    # Only this worker answers for itself: another replica's pong proves nothing.
    assert "--destination" in test


def test_every_secret_is_a_required_environment_interpolation(services: dict[str, dict[str, Any]]) -> None:
    seen: set[str] = set()
    for name, service in services.items():
        for variable, value in environment_of(service).items():
            if variable in SECRETS:
                assert re.fullmatch(REQUIRED, value), f"{name}: {variable} must be ${{{variable}:?...}}, not {value!r}"
                seen.add(variable)
            credentials = URL_CREDENTIALS.search(value)
            if credentials:
                password = credentials.group("password")
                assert re.fullmatch(REQUIRED, password), f"{name}: {variable} has a literal password"
                seen.add(re.fullmatch(REQUIRED, password).group("name"))  # type: ignore[union-attr]
    assert seen == set(SECRETS)
    raw = COMPOSE_FILE.read_text()
    # Wherever a secret is interpolated, it is required: no silent empty default.
    for secret in SECRETS:
        for use in re.findall(r"\$\{" + secret + r"([^}]*)\}", raw):
            assert use.startswith(":?"), f"${{{secret}{use}}} must be required (:?)"


def test_the_tracker_services_get_the_secret_key_and_flower_its_basic_auth(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("migrate", *TRACKER_SERVICES):
        environment = environment_of(services[name])
        assert "TRACKER_SECRET_KEY" in environment, name
        assert environment.get("TRACKER_MODE") == "production", name
    assert "FLOWER_BASIC_AUTH" in environment_of(services["flower"])
    # Published on loopback only: a TLS proxy goes in front of it.
    assert all(str(port).startswith("127.0.0.1:") for port in services["flower"].get("ports", []))


def test_migrations_run_once_and_first(services: dict[str, dict[str, Any]]) -> None:
    migrate = services["migrate"]
    assert command_text(migrate["command"]) == "tracker db upgrade"
    assert migrate.get("restart") == "no"
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in TRACKER_SERVICES:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == depends["redis"]["condition"] == "service_healthy", name


def test_the_exporter_listens_for_prometheus_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    exporter = services["exporter"]
    command = command_text(exporter["command"])
    assert command.startswith("tracker exporter"), command
    # Inside the container it must listen beyond loopback, or nothing could scrape it.
    assert "--address 0.0.0.0" in command and "--port 9808" in command, command
    assert exporter.get("ports") == ["127.0.0.1:9808:9808"]
    # Its health check asks `/`, which runs no database query.
    assert "127.0.0.1:9808/'" in command_text(exporter["healthcheck"]["test"])
