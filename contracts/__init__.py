"""TPA event contracts: the shared language of the services on Kafka.

- ``envelope``: the JSON value of every Kafka record (``EventEnvelope``).
- ``registry`` (one module per service): event payload models, versioned.
- ``topics``: topic names, the topic catalogue, CloudEvents Kafka headers,
  ``EVENT_MODELS`` and ``parse_event``.
- ``compat``: the backward-compatibility rules for published schemas.
- ``generate``: writes ``schemas/*.json`` and ``asyncapi.yaml`` (``make schemas``).

Events never carry personal data (names, ID numbers, phone numbers); they refer
to people and households by opaque identifiers only.

Importing this package performs no I/O.
"""
