"""eventkit: the shared plumbing every TPA service stands on.

Event store (PostgreSQL), outbox relay (Kafka), projection runner, migrations,
idempotent command execution, telemetry, settings and test helpers.

Importing this package performs no I/O.
"""
