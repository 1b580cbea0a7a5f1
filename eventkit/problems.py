"""The RFC 9457 problem document the services send, as a model for OpenAPI (no I/O, no web framework)."""

from __future__ import annotations

from pydantic import BaseModel


class Problem(BaseModel):
    type: str
    title: str
    status: int
    code: str
    detail: str | None = None
    field: str | None = None
