"""Composition root of the registry service."""

from __future__ import annotations

from pathlib import Path

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings

from .api import router


def build(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or load_settings("registry")
    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          routers=[router], title="TPA registry")
