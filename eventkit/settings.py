"""Configuration from the environment (pydantic-settings).

Per-service variables carry the service name: ``TPA_REGISTRY_DATABASE_URL``,
``TPA_REGISTRY_PORT``. Kafka settings are shared and use the conventional
unprefixed names (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_ENABLE_IDEMPOTENCE``).
"""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("registry", "workflow", "funds", "monitoring", "gateway")


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    service: str
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("kafka_bootstrap_servers", "KAFKA_BOOTSTRAP_SERVERS")
    )
    # Idempotent producer: on for Apache Kafka, off for the embedded broker (it rejects it).
    kafka_enable_idempotence: bool = Field(
        default=True, validation_alias=AliasChoices("kafka_enable_idempotence", "KAFKA_ENABLE_IDEMPOTENCE")
    )
    kafka_topic_partitions: int = Field(
        default=3, validation_alias=AliasChoices("kafka_topic_partitions", "KAFKA_TOPIC_PARTITIONS")
    )
    kafka_replication_factor: int = Field(
        default=1, validation_alias=AliasChoices("kafka_replication_factor", "KAFKA_REPLICATION_FACTOR")
    )

    # Consumer groups are named <prefix>.<service>.<projection>.e<epoch>.
    kafka_group_prefix: str = Field(
        default="tpa", validation_alias=AliasChoices("kafka_group_prefix", "KAFKA_GROUP_PREFIX")
    )

    relay_batch_size: int = 500
    relay_poll_interval: float = 1.0
    relay_lost_data_check_interval: float = 5.0
    projection_max_retries: int = 3
    projection_batch_size: int = 500

    log_level: str = Field(default="INFO", validation_alias=AliasChoices("log_level", "TPA_LOG_LEVEL"))
    log_json: bool = Field(default=True, validation_alias=AliasChoices("log_json", "TPA_LOG_JSON"))

    # Where the gateway finds the services it routes to.
    registry_url: str | None = Field(default=None, validation_alias=AliasChoices("registry_url", "TPA_REGISTRY_URL"))
    workflow_url: str | None = Field(default=None, validation_alias=AliasChoices("workflow_url", "TPA_WORKFLOW_URL"))
    funds_url: str | None = Field(default=None, validation_alias=AliasChoices("funds_url", "TPA_FUNDS_URL"))
    monitoring_url: str | None = Field(
        default=None, validation_alias=AliasChoices("monitoring_url", "TPA_MONITORING_URL")
    )

    @property
    def source(self) -> str:
        """CloudEvents `source` of this service's events."""
        return f"/tpa/{self.service}"


def load_settings(service: str, **overrides: Any) -> ServiceSettings:
    """Settings of one service: its own TPA_<SERVICE>_* variables plus the shared ones."""
    if service not in SERVICES:
        raise ValueError(f"unknown service {service!r}; expected one of {', '.join(SERVICES)}")
    prefix = f"TPA_{service.upper()}_"

    class _Settings(ServiceSettings):
        model_config = SettingsConfigDict(env_prefix=prefix, extra="ignore", populate_by_name=True)

    return _Settings(service=service, **overrides)
