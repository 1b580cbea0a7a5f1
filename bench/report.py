"""Rows, targets, the printed table, and the JSON and markdown result files."""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ratio", "x"):
        return f"{value:.2f}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


@dataclass
class Row:
    section: str
    name: str
    unit: str
    runs: list[float]
    limit_name: str | None = None
    limit_runs: list[float] = field(default_factory=list)
    higher_is_better: bool = True
    note: str = ""

    @property
    def value(self) -> float | None:
        return median(self.runs)

    @property
    def limit(self) -> float | None:
        return median(self.limit_runs) if self.limit_runs else None

    @property
    def ratio(self) -> float | None:
        """Measured over limit for rates (1.0 = at the limit); limit over measured for durations."""
        v, lim = self.value, self.limit
        if v is None or lim is None or v == 0 or lim == 0:
            return None
        return v / lim if self.higher_is_better else lim / v

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(median=self.value, limit=self.limit, ratio=self.ratio)
        return d


@dataclass
class Target:
    text: str
    measured: str
    met: bool | None  # None: not evaluated (and why is in `note`)
    note: str = ""

    @property
    def verdict(self) -> str:
        return {True: "met", False: "NOT met", None: "not evaluated"}[self.met]


HEADER = f"{'measurement':<24} {'figure':<46} {'median':>11} {'unit':<10} {'limit':>11} {'ratio':>6}"


class Report:
    def __init__(self, out_dir: Path, meta: dict[str, Any]) -> None:
        self.out_dir = out_dir
        self.meta = meta
        self.rows: list[Row] = []
        self.targets: list[Target] = []
        self.notes: list[str] = []
        self.profiles: dict[str, dict[str, Any]] = {}
        self.extra: dict[str, Any] = {}
        self._printed_header = False

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        if not self._printed_header:
            print(HEADER)
            print("-" * len(HEADER))
            self._printed_header = True
        ratio = fmt(row.ratio, "ratio") if row.ratio is not None else ""
        limit = fmt(row.limit, row.unit) if row.limit is not None else ""
        print(f"{row.section[:24]:<24} {row.name[:46]:<46} {fmt(row.value, row.unit):>11} {row.unit[:10]:<10} "
              f"{limit:>11} {ratio:>6}", flush=True)
        return row

    def find(self, section: str, name: str) -> Row | None:
        return next((r for r in self.rows if r.section == section and r.name == name), None)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", file=sys.stderr, flush=True)

    # -- files ---------------------------------------------------------------------------------------

    def paths(self) -> tuple[Path, Path]:
        stem = self.meta["run"]["file_stem"]
        return self.out_dir / f"{stem}.json", self.out_dir / f"{stem}.md"

    def write(self) -> tuple[Path, Path]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.meta["run"]["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        json_path, md_path = self.paths()
        doc = {**self.meta, "rows": [r.to_json() for r in self.rows],
               "targets": [{**asdict(t), "verdict": t.verdict} for t in self.targets],
               "notes": self.notes, "profiles": self.profiles, **self.extra}
        json_path.write_text(json.dumps(doc, indent=2, ensure_ascii=False, default=str) + "\n")
        md_path.write_text(self.markdown())
        return json_path, md_path

    def markdown(self) -> str:
        m = self.meta["machine"]
        run = self.meta["run"]
        pg = m.get("postgresql", {})
        lines = [f"# TPA benchmark: {run['size_label']} ({run['households']:,} households), "
                 f"{run['started_at'][:10]}", ""]
        if run.get("interrupted"):
            lines += ["**Interrupted run: the figures below are partial.**", ""]
        if run.get("failed"):
            lines += [f"**Failed run (partial figures): {run['failed'][:500]}**", ""]
        lines += [
            f"`python -m bench {' '.join(run['argv'])}` - every figure is the median of {run['repeat']} runs; "
            "a limit is measured in the same run, on the same data, on the same machine.", "",
            "## Machine", "",
            "| | |", "|---|---|",
            f"| CPU | {m.get('cpu_model')} ({m.get('usable_cpus')} usable of {m.get('logical_cpus')} logical CPUs) |",
            f"| RAM | {m.get('ram_bytes', 0) / 2 ** 30:.1f} GiB |",
            f"| OS | {m.get('os')} |",
            f"| PostgreSQL | {pg.get('version', '?').split(' on ')[0]}; shared_buffers {pg.get('shared_buffers')}, "
            f"fsync {pg.get('fsync')}, synchronous_commit {pg.get('synchronous_commit')}, "
            f"wal_level {pg.get('wal_level')}, max_wal_size {pg.get('max_wal_size')}; "
            f"data on {pg.get('data_filesystem')} |",
            f"| Python | {m.get('python')} |",
            f"| Broker | {m['broker']['name']}; {m['broker'].get('version') or 'version unknown'} |",
            f"| Load average | {m.get('load_average_at_start')} at start, {run.get('load_average_at_end')} at end "
            "(other work on the machine shows here) |",
            f"| Commit | {m['git'].get('commit')}{' (with uncommitted changes)' if m['git'].get('dirty') else ''} |",
            "",
            "## Measurements", "",
            "Ratio: the measured rate over its limit (1.00 = as fast as the limit); for durations, limit over "
            "measured.",
            "",
            "| measurement | figure | median | unit | limit | limit figure | ratio | runs |",
            "|---|---|---:|---|---:|---|---:|---|",
        ]
        for r in self.rows:
            runs = ", ".join(fmt(x, r.unit) for x in r.runs)
            lim_runs = f" / limit: {', '.join(fmt(x, r.unit) for x in r.limit_runs)}" if r.limit_runs else ""
            lines.append(f"| {r.section} | {r.name}{(' (' + r.note + ')') if r.note else ''} | {fmt(r.value, r.unit)} "
                         f"| {r.unit} | {fmt(r.limit, r.unit) if r.limit is not None else ''} | {r.limit_name or ''} "
                         f"| {fmt(r.ratio, 'ratio') if r.ratio is not None else ''} | {runs}{lim_runs} |")
        lines += ["", "## Targets (issue 8)", "", "| target | measured | verdict | note |", "|---|---|---|---|"]
        for t in self.targets:
            verdict = {True: "met", False: "**not met**", None: "not evaluated"}[t.met]
            lines.append(f"| {t.text} | {t.measured} | {verdict} | {t.note} |")
        if self.extra.get("resources"):
            lines += ["", "## Resources", ""]
            res = self.extra["resources"]
            lines += ["| process | peak RSS (MiB) |", "|---|---:|"]
            for name, kib in res.get("peak_rss_kib", {}).items():
                lines.append(f"| {name} | {kib / 1024:.0f} |" if kib else f"| {name} | - |")
            if res.get("database"):
                lines += ["", "| database | size (MiB) | events | MiB per million events |", "|---|---:|---:|---:|"]
                for name, d in res["database"].items():
                    per = d.get("mib_per_million_events")
                    lines.append(f"| {name} | {d['bytes'] / 2 ** 20:.1f} | {d.get('events') or ''} | "
                                 f"{per:.0f} |" if per is not None else
                                 f"| {name} | {d['bytes'] / 2 ** 20:.1f} | {d.get('events') or ''} | |")
        if self.profiles:
            lines += ["", "## Where the time goes", ""]
            for name, p in self.profiles.items():
                lines += [f"### {name}", "", p.get("summary", ""), ""]
                if p.get("file"):
                    lines += [f"Full profile: `{p['file']}`", ""]
                if p.get("top"):
                    lines += ["```", *p["top"], "```", ""]
        if self.notes:
            lines += ["", "## Notes", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(lines) + "\n"
