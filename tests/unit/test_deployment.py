"""The compose file and the package: what a deployment is built from."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from saga_tools.cli import parser

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("inventory", "payment", "shipping", "notification")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_runs_the_whole_system(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"redis", "rabbitmq", "orchestrator", *SERVICES, "api", "flower"} <= set(services)
    assert services["rabbitmq"]["profiles"] == ["rabbitmq"]
    assert services["postgres"]["profiles"] == ["postgres"]
    # every long-running service has a health check; workers and the orchestrator answer a
    # ping through their own queue
    for name, service in services.items():
        if name not in ("stock", "secrets"):  # the one shots
            assert service["healthcheck"]["test"], name
    for name in (*SERVICES, "orchestrator"):
        assert services[name]["healthcheck"]["test"][1:4] == ["saga", "ping", name], name
    for name in ("orchestrator", *SERVICES, "api", "flower"):
        assert "saga-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["SAGA_DATA_DIR"] == "/data"
        assert services[name]["environment"]["SAGA_DATABASE_URL"] == "${SAGA_DATABASE_URL:-}"
    assert {"saga-data", "postgres-data", "saga-secrets"} <= set(compose["volumes"])
    # who may do what: every process signs with the keys the one-shot `secrets` made, only
    # after it made them; the API wants a token; Redis a user (docs/security.md)
    for name in ("orchestrator", *SERVICES, "api", "flower"):
        assert "saga-secrets:/secrets:ro" in services[name]["volumes"], name
        environment = services[name]["environment"]
        assert environment["SAGA_KEYS_FILE"] == "/secrets/keys.json", name
        assert environment["SAGA_API_TOKENS_FILE"] == "/secrets/tokens.json", name
        assert environment["SAGA_BROKER_URL"].startswith("${SAGA_BROKER_URL:-redis://saga:"), name
        assert services[name]["depends_on"]["secrets"] == {
            "condition": "service_completed_successfully"
        }
    assert "saga keys /secrets/keys.json" in services["secrets"]["command"][-1]
    redis_command = services["redis"]["command"]
    assert redis_command[redis_command.index("default") :][:5] == [
        "default",
        "on",
        "nopass",
        "-@all",
        "+ping",
    ]
    assert services["rabbitmq"]["environment"]["RABBITMQ_DEFAULT_VHOST"] == "saga"
    # Compose v1 (Debian's) refuses `required` and a dependency on a profile's service
    for name, service in services.items():
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert "profiles" not in services[dependency] and "required" not in condition, name
    # the shop is stocked on first start; metrics listen beyond the container's loopback
    assert services["stock"]["command"][:3] == ["saga", "stock", "seed"]
    assert services["stock"]["restart"] == "on-failure"  # until its database answers
    assert services["orchestrator"]["command"][2:4] == ["--metrics-host", "0.0.0.0"]


def test_each_compose_command_is_a_real_saga_command(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        command = service.get("command")
        if not command or command[0] != "saga":
            continue
        args = parser().parse_args(command[1:])  # exits (SystemExit) on a bad command
        assert args.command in ("orchestrator", "worker", "api", "stock"), name
        check = service.get("healthcheck", {}).get("test", [])
        if check[1:2] == ["saga"]:
            parser().parse_args(check[2:])
        if args.command == "worker":
            assert args.service == name
    flower = compose["services"]["flower"]["command"]
    assert flower[:3] == ["celery", "-A", "saga_app.worker"] and "flower" in flower


def test_saga_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "saga_tools.cli", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0 and result.stdout.startswith("saga 0.")
