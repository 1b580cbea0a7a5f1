"""Configuration from the environment (pydantic-settings).

Per-service variables carry the service name: ``TPA_REGISTRY_DATABASE_URL``,
``TPA_REGISTRY_PORT``. Kafka settings are shared and use the conventional
unprefixed names (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_ENABLE_IDEMPOTENCE``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

SERVICES = ("registry", "workflow", "funds", "monitoring", "gateway")
CompressionType = Literal["none", "gzip", "snappy", "lz4", "zstd"]
"""Record batch compressions a TPA producer may use (``KAFKA_COMPRESSION_TYPE``)."""


class ServiceSettings(BaseSettings):
    # Field names work as constructor arguments; from the environment only the prefixed
    # (or the explicitly aliased, conventional) variable names are read.
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True, case_sensitive=True)

    service: str
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 0

    kafka_bootstrap_servers: str | None = Field(
        default=None, validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS")
    )
    # Idempotent producer: on for Apache Kafka, off for the embedded broker (it rejects it).
    kafka_enable_idempotence: bool = Field(
        default=True, validation_alias=AliasChoices("KAFKA_ENABLE_IDEMPOTENCE")
    )
    # Producers compress record batches (zstd: about a third of the bytes of JSON events on the
    # wire, on disk and in the embedded broker's memory; needs a client that reads zstd, i.e.
    # Kafka 2.1+ protocol clients and librdkafka) and fill batches of up to this many bytes
    # (Kafka's default of 16 KiB holds about 30 events). See ADR 0017.
    kafka_compression_type: CompressionType = Field(
        default="zstd", validation_alias=AliasChoices("KAFKA_COMPRESSION_TYPE")
    )
    kafka_producer_batch_bytes: int = Field(
        default=262_144, ge=1024, le=1_000_000, validation_alias=AliasChoices("KAFKA_PRODUCER_BATCH_BYTES")
    )
    kafka_topic_partitions: int = Field(
        default=3, validation_alias=AliasChoices("KAFKA_TOPIC_PARTITIONS")
    )
    kafka_replication_factor: int = Field(
        default=1, validation_alias=AliasChoices("KAFKA_REPLICATION_FACTOR")
    )

    # Consumer groups are named <prefix>.<service>.<projection>.e<epoch>.
    kafka_group_prefix: str = Field(
        default="tpa", validation_alias=AliasChoices("KAFKA_GROUP_PREFIX")
    )

    # How long an Idempotency-Key's first result is kept (a retry after that runs again).
    idempotency_retention_hours: float = 168.0

    relay_batch_size: int = 2000
    relay_poll_interval: float = 1.0
    relay_lost_data_check_interval: float = 5.0
    projection_max_retries: int = 3
    projection_batch_size: int = 500

    # Workflow: folder of the case type definitions (default: the shipped ones) and how
    # often overdue steps are looked for (seconds; 0 turns the scan off).
    case_types_dir: str | None = None
    overdue_scan_interval: float = 300.0

    # Registry: secret key of the keyed hash (HMAC-SHA256) of resident ID numbers.
    id_hmac_key: str | None = None

    # Identity: the keyring of the internal identity tokens (``X-TPA-Identity``) the gateway signs
    # and every service verifies (``kid=base64url-key,...``; the first key signs). Required.
    internal_token_keys: str | None = Field(
        default=None, validation_alias=AliasChoices("internal_token_keys", "TPA_INTERNAL_TOKEN_KEYS"))
    # Gateway: the keyring of the access tokens it issues (TPA_GATEWAY_TOKEN_KEYS), the public
    # address household-card links point to, per-caller rate limits and request size limits.
    token_keys: str | None = None
    public_base_url: str = "http://127.0.0.1:8000"
    rate_limit_per_minute: int = 600
    rate_limit_burst: int = 120
    max_body_bytes: int = 2 * 1024 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024

    log_level: str = Field(default="INFO", validation_alias=AliasChoices("TPA_LOG_LEVEL"))
    log_json: bool = Field(default=True, validation_alias=AliasChoices("TPA_LOG_JSON"))

    # Where the gateway finds the services it routes to.
    registry_url: str | None = Field(default=None, validation_alias=AliasChoices("TPA_REGISTRY_URL"))
    workflow_url: str | None = Field(default=None, validation_alias=AliasChoices("TPA_WORKFLOW_URL"))
    funds_url: str | None = Field(default=None, validation_alias=AliasChoices("TPA_FUNDS_URL"))
    monitoring_url: str | None = Field(
        default=None, validation_alias=AliasChoices("TPA_MONITORING_URL")
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
        model_config = SettingsConfigDict(env_prefix=prefix, extra="ignore", populate_by_name=True,
                                          case_sensitive=False)

    return _Settings(service=service, **overrides)
