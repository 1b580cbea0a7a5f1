"""Composition root of the workflow service (its domain arrives in its own issue)."""

from __future__ import annotations

from pathlib import Path

from eventkit.runtime import ServiceRuntime
from eventkit.settings import ServiceSettings, load_settings


def build(settings: ServiceSettings | None = None) -> ServiceRuntime:
    settings = settings or load_settings("workflow")
    return ServiceRuntime(settings, migrations_dir=Path(__file__).parent / "migrations",
                          title="TPA workflow")
