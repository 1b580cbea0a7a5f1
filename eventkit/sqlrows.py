"""Many rows in one SQL statement."""

from __future__ import annotations

from typing import Any, Iterable, Sequence


def unnest_columns(rows: Iterable[Sequence[Any]]) -> list[list[Any]]:
    """Rows as one list per column: the array arguments of an ``INSERT ... SELECT FROM unnest($1::t[], ...)``
    that writes any number of rows in one statement (and one round trip)."""
    return [list(column) for column in zip(*rows)]
