"""Small Kafka helpers shared by the relay and the projection runner."""

from __future__ import annotations

import logging
from typing import Iterable, get_args

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from .settings import CompressionType

log = logging.getLogger("eventkit.kafka")

COMPRESSION_TYPES: tuple[str, ...] = get_args(CompressionType)


def new_producer(
    bootstrap_servers: str,
    *,
    client_id: str,
    enable_idempotence: bool,
    compression_type: str = "zstd",
    batch_bytes: int = 262_144,
    linger_ms: int = 5,
) -> AIOKafkaProducer:
    """A producer as every TPA publisher uses it: acks from all in-sync replicas, batches of up
    to ``batch_bytes`` compressed with ``compression_type`` (ADR 0017)."""
    if compression_type not in COMPRESSION_TYPES:
        raise ValueError(f"compression_type must be one of {COMPRESSION_TYPES}, not {compression_type!r}")
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id=client_id,
        acks="all",
        enable_idempotence=enable_idempotence,
        compression_type=None if compression_type == "none" else compression_type,
        max_batch_size=batch_bytes,
        linger_ms=linger_ms,
        request_timeout_ms=10_000,
        retry_backoff_ms=200,
    )


async def ensure_topics(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    partitions: int,
    replication_factor: int,
    client_id: str = "tpa-admin",
) -> list[str]:
    """Create the topics that do not exist yet; return the ones created."""
    wanted = set(topics)
    if not wanted:
        return []
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id=client_id)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        # Keep everything: consumers rebuild read models from the beginning of a topic.
        configs = {"retention.ms": "-1", "retention.bytes": "-1"}
        to_create = [NewTopic(t, partitions, replication_factor, topic_configs=configs)
                     for t in sorted(wanted - existing)]
        if not to_create:
            return []
        try:
            response = await admin.create_topics(to_create)
        except TopicAlreadyExistsError:  # created concurrently by another service
            return []
        created = []
        for topic, code, *_ in getattr(response, "topic_errors", []):
            if code in (0, 36):  # 36: TOPIC_ALREADY_EXISTS
                if code == 0:
                    created.append(topic)
            else:
                log.warning("could not create topic %s: error code %s", topic, code)
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        await admin.close()
