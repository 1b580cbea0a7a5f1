"""The Kafka compat proxy in front of the embedded broker (tansu)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import uuid

import pytest
from aiokafka import AIOKafkaProducer

from eventkit.embedded import (
    EmbeddedBroker,
    _encode_uvarint,
    rewrite_api_versions_response,
)
from eventkit.kafka import ensure_topics

_uvarint = _encode_uvarint


def _tags(fields: list[tuple[int, bytes]]) -> bytes:
    return _uvarint(len(fields)) + b"".join(_uvarint(t) + _uvarint(len(v)) + v for t, v in fields)


def _api_versions_v3(top_level_tags: list[tuple[int, bytes]]) -> bytes:
    """A flexible ApiVersions response payload (correlation id first, no size prefix)."""
    keys = [(0, 0, 11), (3, 0, 12), (18, 0, 4)]
    body = struct.pack(">ih", 1234, 0)  # correlation_id, error_code
    body += _uvarint(len(keys) + 1)
    for key in keys:
        body += struct.pack(">hhh", *key) + _tags([])
    return body + struct.pack(">i", 0) + _tags(top_level_tags)  # throttle_time_ms, tags


DEFAULTS = [(0, b"\x01"), (1, b"\xff" * 8), (2, b"\x01"), (3, b"\x00")]


def test_rewrite_drops_default_tags_and_keeps_the_rest() -> None:
    # Exactly the tail tansu sends: all four tags at their defaults.
    original = _api_versions_v3(DEFAULTS)
    assert original.endswith(bytes.fromhex("00000000" "04" "0001" "01" "0108ffffffffffffffff" "020101" "030100"))
    rewritten = rewrite_api_versions_response(original)
    assert rewritten == _api_versions_v3([])
    assert rewritten.endswith(b"\x00\x00\x00\x00\x00")  # throttle_time_ms, zero tags

    # Non-default values and unknown tags are kept, in order; defaults go.
    epoch = struct.pack(">q", 7)
    mixed = _api_versions_v3([(0, b"\x01"), (1, epoch), (3, b"\x01"), (9, b"xyz")])
    assert rewrite_api_versions_response(mixed) == _api_versions_v3([(1, epoch), (3, b"\x01"), (9, b"xyz")])

    # Nothing to drop: the very same object comes back.
    plain = _api_versions_v3([(1, epoch)])
    assert rewrite_api_versions_response(plain) is plain


def test_rewrite_keeps_entry_tags() -> None:
    body = struct.pack(">ih", 1, 0) + _uvarint(2) + struct.pack(">hhh", 18, 0, 4) + _tags([(5, b"ab")])
    original = body + struct.pack(">i", 0) + _tags(DEFAULTS)
    assert rewrite_api_versions_response(original) == body + struct.pack(">i", 0) + _tags([])


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00\x00\x04\xd2",  # correlation id only
        _api_versions_v3(DEFAULTS)[:-1],  # truncated tag value
        _api_versions_v3(DEFAULTS) + b"\x00",  # trailing garbage
        struct.pack(">ih", 1, 0) + b"\x00" + struct.pack(">i", 0) + _tags(DEFAULTS),  # null api_keys
        struct.pack(">ih", 1, 0) + b"\xff\xff\xff\xff\xff\xff",  # endless varint
        # An ApiVersions v0 answer (e.g. UNSUPPORTED_VERSION): int32 array, no tags.
        struct.pack(">ihi", 1, 35, 1) + struct.pack(">hhh", 18, 0, 3),
    ],
)
def test_rewrite_leaves_malformed_input_unchanged(payload: bytes) -> None:
    assert rewrite_api_versions_response(payload) == payload


async def test_kcat_consumes_through_the_proxy() -> None:
    kcat = shutil.which("kcat")
    if kcat is None:
        pytest.skip("kcat is not installed (apt-get install kcat)")
    topic = f"tpa.test.proxy.{uuid.uuid4().hex[:8]}"
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        await ensure_topics(bootstrap, [topic], partitions=1, replication_factor=1)

        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait(
                    topic, key=f"key{i}".encode(), value=f"value{i}".encode(), headers=[("h", f"hv{i}".encode())]
                )
        finally:
            await producer.stop()

        result = subprocess.run(
            [kcat, "-C", "-b", bootstrap, "-t", topic, "-e", "-q", "-f", "%k|%h|%s\\n"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"kcat failed:\n{result.stderr}\n--- broker ---\n{broker.output()}"
        lines = result.stdout.splitlines()
        assert lines == [f"key{i}|h=hv{i}|value{i}" for i in range(3)], result.stderr


def test_public_port_is_the_proxy_and_survives_restart() -> None:
    with EmbeddedBroker() as broker:
        port = broker.port
        assert broker.internal_port != port
        broker.restart()
        assert broker.port == port
        # A fresh connection on the public port reaches the new broker end to end.
        from eventkit.embedded import _api_versions_probe

        _api_versions_probe(broker.host, port)
    with EmbeddedBroker(compat_proxy=False) as broker:
        assert broker.internal_port == broker.port
