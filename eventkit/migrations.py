"""Versioned SQL migrations, applied at service start, idempotently.

Each component (``eventkit`` itself, then the service) has a folder of files named
``NNNN_description.sql``. Applied files are recorded with a checksum; a file that
changed after it was applied stops the service rather than drifting silently.
Concurrent starters serialise on an advisory lock.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import MigrationError

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x7470_616D_6967  # "tpamig"

EVENTKIT_MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass(frozen=True)
class Migration:
    component: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load(component: str, directory: Path) -> list[Migration]:
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"migration file name not NNNN_name.sql: {path}")
        found.append(Migration(component, int(m.group(1)), path.name, path.read_text()))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"duplicate migration versions in {directory}")
    return found


async def apply(conn, migrations: list[Migration]) -> list[str]:
    """Apply what is not applied yet; return the names applied now."""
    applied_now: list[str] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   component  text NOT NULL,
                   version    integer NOT NULL,
                   name       text NOT NULL,
                   checksum   text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now(),
                   PRIMARY KEY (component, version))"""
        )
        rows = await conn.fetch("SELECT component, version, name, checksum FROM schema_migrations")
        done = {(r["component"], r["version"]): r for r in rows}
        for mig in migrations:
            prior = done.get((mig.component, mig.version))
            if prior is not None:
                if prior["checksum"] != mig.checksum:
                    raise MigrationError(
                        f"{mig.component}/{mig.name} changed after it was applied "
                        "(write a new migration instead of editing an applied one)"
                    )
                continue
            async with conn.transaction():
                try:
                    await conn.execute(mig.sql)
                except Exception as exc:  # report which file failed
                    raise MigrationError(f"{mig.component}/{mig.name} failed: {exc}") from exc
                await conn.execute(
                    "INSERT INTO schema_migrations (component, version, name, checksum)"
                    " VALUES ($1, $2, $3, $4)",
                    mig.component, mig.version, mig.name, mig.checksum,
                )
            applied_now.append(f"{mig.component}/{mig.name}")
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now
