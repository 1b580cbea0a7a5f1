"""What the measurements share during one run."""

from __future__ import annotations

import argparse
import asyncio
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .data import Dataset, prepare_service_db
from .infra import Infra, log
from .report import Report


@dataclass
class Ctx:
    args: argparse.Namespace
    infra: Infra
    report: Report
    dataset: Dataset
    repeat: int
    profile: str  # auto | always | never
    profile_dir: Path
    registry_db: str | None = None  # the registry database the later measurements use
    registry_events: int = 0
    monitoring_db: str | None = None
    gateway_db: str | None = None
    worker_peaks: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)  # medians for the end-to-end estimate
    db_baselines: dict[str, int] = field(default_factory=dict)  # database -> bytes when created

    def worker(self, task: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        result = self.infra.run_worker(task, args, timeout=timeout)
        rss = result.get("maxrss_kib")
        if rss:
            self.worker_peaks[task] = max(self.worker_peaks.get(task, 0), rss)
        return result

    def fresh_db(self, service: str | None, name: str, with_regions: bool = False) -> str:
        """A new empty database, with the service's migrations (and the region rows) when a service
        is named; its size then is kept as the baseline of the size-per-event figures."""
        dsn = self.infra.fresh_database(name)
        if service is not None:
            asyncio.run(prepare_service_db(service, dsn, self.infra.hmac_key, self.infra.internal_keys,
                                           self.infra.gateway_keys,
                                           self.dataset.regions_file if with_regions else None))
        self.db_baselines[name] = int(self.infra.pg.psql(
            "SELECT pg_database_size(current_database())", database=name).strip())
        return dsn

    def want_profile(self, missed: bool | None) -> bool:
        return self.profile == "always" or (self.profile == "auto" and missed is True)

    def profile_path(self, name: str) -> Path:
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        return self.profile_dir / f"{self.report.meta['run']['file_stem']}-profile-{name}.txt"

    def attach_profile(self, name: str, path: Path, summary: str, top_lines: int = 45) -> None:
        import json

        text = path.read_text() if path.exists() else ""
        by_package = path.with_suffix(".json")
        packages = json.loads(by_package.read_text())["by_package"] if by_package.exists() else []
        shares = ", ".join(f"{p['package']} {p['share']:.0%}" for p in packages[:8] if p["share"] >= 0.02)
        try:
            shown = str(path.relative_to(Path.cwd()))
        except ValueError:
            shown = str(path)
        self.report.profiles[name] = {
            "file": shown, "summary": summary + (f" Own time by package: {shares}." if shares else ""),
            "by_package": packages[:15], "top": _top_of_profile(text, top_lines)}
        log(f"profile of {name} in {path}")


def _top_of_profile(text: str, n: int) -> list[str]:
    """The heaviest call paths of a pyinstrument text report (its tree, without the header)."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^(\d+\.\d+ |\s*\d+\.\d+%)", line)), len(lines))
    return [line.rstrip() for line in lines[start:] if line.strip()][:n]
