"""docker-compose.yml: valid Compose file and the production-like topology the platform needs.

Validation uses, in this order, whatever is installed:

1. ``docker-compose config -q`` (Compose v1, Debian package ``docker-compose``) or
   ``docker compose config -q`` (Compose v2 plugin); neither needs a Docker engine;
2. the Compose-spec JSON schema shipped inside the docker-compose v1 Python
   package (``compose/config/compose_spec.json``): from an installed copy, or from
   its wheel downloaded from PyPI into the virtualenv; checked with jsonschema.

When none is available the test fails with install instructions instead of skipping.
The structural checks below need only PyYAML.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
SERVICES = ("registry", "workflow", "funds", "monitoring", "gateway")
KAFKA_NODES = ("kafka-1", "kafka-2", "kafka-3")
REQUIRED_SECRETS = (
    "POSTGRES_PASSWORD",
    "TPA_REGISTRY_DB_PASSWORD",
    "TPA_WORKFLOW_DB_PASSWORD",
    "TPA_FUNDS_DB_PASSWORD",
    "TPA_MONITORING_DB_PASSWORD",
    "TPA_GATEWAY_DB_PASSWORD",
    "TPA_REGISTRY_ID_HMAC_KEY",
    "TPA_FUNDS_ID_HMAC_KEY",
    "TPA_GATEWAY_TOKEN_KEYS",
    "TPA_INTERNAL_TOKEN_KEYS",
)
INSTALL_HINT = (
    "cannot validate docker-compose.yml: no Compose implementation or Compose-spec schema found. "
    "Install one, e.g. on Debian/Ubuntu: `sudo apt-get install -y --no-install-recommends docker-compose` "
    "(provides `docker-compose config` and compose/config/compose_spec.json; no Docker engine needed), "
    "or the Docker Compose v2 plugin (`docker compose`)."
)


# -- helpers ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def _dummy_secrets_env(tmp_path: Path, *, omit: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    for name in REQUIRED_SECRETS:
        if name != omit:
            env[name] = f"dummy-{name.lower().replace('_', '-')}"
    # Keep compose v2 from contacting anything and v1 from reading a developer's .env.
    env.pop("DOCKER_HOST", None)
    env.setdefault("HOME", str(tmp_path))
    return env


def _compose_cli() -> list[str] | None:
    exe = shutil.which("docker-compose")
    if exe:
        return [exe]
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=30)
        if probe.returncode == 0:
            return [docker, "compose"]
    return None


def _compose_schema_path() -> Path | None:
    spec = None
    try:
        spec = importlib.util.find_spec("compose")
    except (ImportError, ValueError):
        spec = None
    candidates: list[Path] = []
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / "config" / "compose_spec.json" for p in spec.submodule_search_locations]
    # The Debian package installs into the system interpreter's dist-packages, which a
    # virtualenv does not see.
    for pattern in (
        "/usr/lib/python3/dist-packages/compose/config/compose_spec.json",
        "/usr/local/lib/python3*/dist-packages/compose/config/compose_spec.json",
        "/usr/lib/python3*/site-packages/compose/config/compose_spec.json",
        "/usr/local/lib/python3*/site-packages/compose/config/compose_spec.json",
    ):
        candidates += [Path(p) for p in sorted(glob.glob(pattern))]
    return next((p for p in candidates if p.is_file()), None) or _compose_schema_from_pypi()


def _compose_schema_from_pypi() -> Path | None:
    """The Compose-spec schema shipped in the docker-compose 1.29.2 wheel on PyPI.

    Downloaded (not installed: its dependencies clash with ours) once into the
    virtualenv, so a fresh machine with only Python and PyPI can run this test.
    """
    cache = Path(sys.prefix) / ".cache" / "compose-spec"
    target = cache / "compose_spec.json"
    if target.is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                           "--dest", str(cache), "docker-compose==1.29.2"],
                          capture_output=True, text=True, timeout=300)
    wheels = sorted(cache.glob("docker_compose-*.whl"))
    if done.returncode != 0 or not wheels:
        return None
    import zipfile

    with zipfile.ZipFile(wheels[0]) as wheel:
        target.write_bytes(wheel.read("compose/config/compose_spec.json"))
    return target


def _run_compose_config(cli: list[str], env: dict[str, str], env_file: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*cli, "--env-file", str(env_file), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- validity ------------------------------------------------------------------------


def test_compose_file_is_valid(tmp_path: Path, compose: dict[str, Any]) -> None:
    cli = _compose_cli()
    schema_path = _compose_schema_path()
    if cli is None and schema_path is None:
        pytest.fail(INSTALL_HINT)

    if cli is not None:
        empty_env_file = tmp_path / "empty.env"
        empty_env_file.write_text("")
        result = _run_compose_config(cli, _dummy_secrets_env(tmp_path), empty_env_file)
        assert result.returncode == 0, f"{' '.join(cli)} config failed:\n{result.stdout}\n{result.stderr}"

        # Secrets are required variables, not committed defaults.
        result = _run_compose_config(cli, _dummy_secrets_env(tmp_path, omit="POSTGRES_PASSWORD"), empty_env_file)
        assert result.returncode != 0
        assert "POSTGRES_PASSWORD" in result.stdout + result.stderr

    if schema_path is not None:
        import jsonschema

        schema = json.loads(schema_path.read_text())
        validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft201909Validator)
        validator = validator_cls(schema, format_checker=validator_cls.FORMAT_CHECKER)
        errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
        assert not errors, "docker-compose.yml violates the Compose spec:\n" + "\n".join(
            f"  {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
        )


# -- topology ------------------------------------------------------------------------


def test_kafka_is_a_three_node_kraft_cluster(compose: dict[str, Any]) -> None:
    services = compose["services"]
    kafka = {name: svc for name, svc in services.items() if "kafka" in str(svc.get("image", ""))}
    assert sorted(kafka) == list(KAFKA_NODES)

    envs = {name: _env(svc) for name, svc in kafka.items()}
    voters = "1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"
    for name, svc in kafka.items():
        env = envs[name]
        assert re.match(r"^apache/kafka:[34]\.", svc["image"]), svc["image"]
        assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == voters
        assert env["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_MIN_INSYNC_REPLICAS"] == "2"
        assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3"
        assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2"
        assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
        assert env["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert "CONTROLLER" in env["KAFKA_CONTROLLER_LISTENER_NAMES"]
        assert "kafka-broker-api-versions.sh" in " ".join(svc["healthcheck"]["test"])
        assert any(str(v).endswith(":/var/lib/kafka/data") for v in svc.get("volumes", []))
        assert "ports" not in svc
    assert sorted(envs[n]["KAFKA_NODE_ID"] for n in KAFKA_NODES) == ["1", "2", "3"]
    cluster_ids = {envs[n]["CLUSTER_ID"] for n in KAFKA_NODES}
    assert len(cluster_ids) == 1 and cluster_ids.pop()


def test_postgres_creates_one_database_and_role_per_service(compose: dict[str, Any]) -> None:
    pg = compose["services"]["postgres"]
    assert str(pg["image"]).startswith("postgres:16")
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert "ports" not in pg
    mounts = [str(v) for v in pg["volumes"]]
    assert any(m.startswith("./deploy/postgres-init.sql:/docker-entrypoint-initdb.d/") for m in mounts)
    # The server settings of the embedded PostgreSQL (`tpa up`, the benchmarks) hold in production too.
    from eventkit.embedded import SERVER_SETTINGS
    assert pg["command"][0] == "postgres"
    assert {f"{k}={v}" for k, v in SERVER_SETTINGS.items()} <= set(pg["command"][1:])

    sql = (ROOT / "deploy" / "postgres-init.sql").read_text()
    for name in SERVICES:
        assert re.search(rf"CREATE ROLE tpa_{name} LOGIN PASSWORD :'", sql), name
        assert f"CREATE DATABASE tpa_{name} OWNER tpa_{name};" in sql
        assert f"REVOKE ALL ON DATABASE tpa_{name} FROM PUBLIC;" in sql
        assert f"\\getenv {name}_password TPA_{name.upper()}_DB_PASSWORD" in sql
        assert f"TPA_{name.upper()}_DB_PASSWORD" in _env(pg)


def test_no_committed_secrets(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        for key, value in _env(svc).items():
            if "PASSWORD" in key:
                assert re.fullmatch(rf"\$\{{{key}:\?[^}}]*\}}", value), f"{name}.{key} must be a required variable"
            if key.endswith("DATABASE_URL"):
                assert re.match(r"^postgresql://tpa_\w+:\$\{TPA_\w+_DB_PASSWORD:\?[^}]*\}@postgres:5432/", value)
    example = (ROOT / "deploy" / ".env.example").read_text()
    for name in REQUIRED_SECRETS:
        assert re.search(rf"^{name}=$", example, re.M), f"{name} missing (or not blank) in deploy/.env.example"


def test_otel_collector(compose: dict[str, Any]) -> None:
    otel = compose["services"]["otel-collector"]
    assert str(otel["image"]).startswith("otel/opentelemetry-collector-contrib")
    assert any(str(v).startswith("./deploy/otel-collector.yaml:") for v in otel["volumes"])
    assert "ports" not in otel

    config = yaml.safe_load((ROOT / "deploy" / "otel-collector.yaml").read_text())
    protocols = config["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"].endswith(":4317")
    assert protocols["http"]["endpoint"].endswith(":4318")
    assert "batch" in config["processors"]
    assert "debug" in config["exporters"]
    for pipeline in config["service"]["pipelines"].values():
        assert pipeline["receivers"] == ["otlp"]
        assert "batch" in pipeline["processors"]
        assert "debug" in pipeline["exporters"]


def test_services_share_one_dockerfile_and_only_the_gateway_is_published(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {*SERVICES, *KAFKA_NODES, "postgres", "otel-collector"}
    assert set(services) == expected

    builds = set()
    for name in SERVICES:
        svc = services[name]
        build = svc["build"]
        if isinstance(build, str):
            build = {"context": build}
        builds.add((build.get("context"), build.get("dockerfile", "Dockerfile")))
        assert svc["command"] == ["serve", name]

        env = _env(svc)
        prefix = f"TPA_{name.upper()}_"
        assert env[prefix + "DATABASE_URL"].endswith(f"@postgres:5432/tpa_{name}")
        assert env[prefix + "HOST"] == "0.0.0.0"
        assert env[prefix + "PORT"] == "8000"
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka-1:9092,kafka-2:9092,kafka-3:9092"
        assert env["KAFKA_ENABLE_IDEMPOTENCE"] == "true"
        assert env["KAFKA_REPLICATION_FACTOR"] == "3"
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        assert env["OTEL_SERVICE_NAME"] == f"tpa-{name}"

        health = " ".join(svc["healthcheck"]["test"])
        assert "urllib" in health and "/healthz" in health
        deps = svc["depends_on"]
        for dep in ("postgres", *KAFKA_NODES):
            assert deps[dep]["condition"] == "service_healthy", (name, dep)
    assert builds == {(".", "Dockerfile")}

    gateway_env = _env(services["gateway"])
    for name in ("registry", "workflow", "funds", "monitoring"):
        assert gateway_env[f"TPA_{name.upper()}_URL"] == f"http://{name}:8000"
        assert services["gateway"]["depends_on"][name]["condition"] == "service_healthy"

    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert published == {"gateway": ["8080:8000"]}


def test_dockerfile_and_dockerignore() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    froms = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert froms and all(image == "python:3.11-slim" for image in froms)
    assert re.search(r"pip install \.(\s|$)", dockerfile)
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["tpa"\]\s*$', dockerfile, re.M)

    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    for pattern in (".venv", ".tpa", ".git"):
        assert pattern in ignored, pattern
    assert "__pycache__" in ignored or "**/__pycache__" in ignored


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
