"""The benchmark harness (issue 8): its command mix, and a whole run at a tiny size.

The figures themselves are never asserted here (performance is measured by ``make bench``,
not by tests); what is checked is that the harness runs end to end and reports every
measurement next to its limit, and every target of the issue, met or not."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from bench.worker import interleave

REPO = Path(__file__).resolve().parent.parent
MIX = {"registration": 0.25, "income": 0.25, "visit": 0.25, "disbursement": 0.25}


def test_the_command_mix_keeps_its_proportions_in_every_window():
    kinds = interleave(MIX, 400)
    assert Counter(kinds) == {k: 100 for k in MIX}
    for start in range(0, 400, 4):  # evenly spread: every four commands hold one of each
        assert sorted(kinds[start:start + 4]) == sorted(MIX)
    uneven = interleave({"a": 3, "b": 1}, 8)
    assert Counter(uneven) == {"a": 6, "b": 2} and uneven[:4].count("b") == 1


def test_a_tiny_run_measures_everything_against_its_limit_and_reports_every_target(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--size", "40", "--repeat", "1", "--skip", "peer", "--profile", "never",
         "--format", "csv", "--gateway-seconds", "1", "--freshness-rates", "4", "--freshness-seconds", "3",
         "--machine", "test-machine", "--out", str(out), "--state-dir", str(tmp_path / "state")],
        cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    [json_path] = out.glob("*-test-machine-40-households.json")
    assert json_path.with_suffix(".md").exists()
    report = json.loads(json_path.read_text())
    assert not report["run"].get("failed") and not report["run"]["interrupted"]
    assert report["machine"]["cpu_model"] and report["machine"]["postgresql"]["version"]  # the machine is described
    rows = {(r["section"], r["name"]): r for r in report["rows"]}
    sections = {s for s, _ in rows}
    assert {"1 bulk registration", "2 relay", "3 projections", "4 freshness", "5 gateway"} <= sections, sections

    def row(section, start):
        [found] = [r for (s, n), r in rows.items() if s == section and n.startswith(start)]
        return found

    imported = row("1 bulk registration", "events/s (import path, end to end)")
    relay = row("2 relay", "events/s published")
    for measured in (imported, relay):  # a throughput next to the limit measured in the same run
        assert measured["median"] > 0 and measured["limit"] > 0 and measured["ratio"] > 0
    for name in ("household-ledger", "village-households", "dashboard", "household-geo", "risk-facts"):
        # At 40 households a projection applies everything in one batch: no rate, but a rebuild time
        # next to its limit (raw consume + COPY of its rows).
        rebuild = row("3 projections", f"{name}: tpa projections rebuild, s")
        assert rebuild["median"] > 0 and rebuild["limit"] > 0, rebuild
    for kind in MIX:  # the whole mix went through and became visible
        assert row("4 freshness", f"4/s offered: {kind} freshness p99")["median"] is not None
    completed = row("4 freshness", "4/s offered: completed")
    assert completed["median"] >= 0.95 * 4, completed
    targets = {t["text"]: t for t in report["targets"]}
    for wanted in ("Bulk registration >= 0.5 x raw COPY events/s", "Relay >= 0.5 x raw produce",
                   "Projection catch-up >= 0.5 x raw consume + COPY",
                   "Freshness p99 < 1 s at >= 300 interactive commands/s", "Status check p99 < 20 ms",
                   "100 000-ID comparison < 5 s", ">= 10 x the peer's bulk registration rate"):
        assert any(t.startswith(wanted) for t in targets), (wanted, list(targets))
    assert targets["Status check p99 < 20 ms"]["met"] is not None  # measured, whatever the verdict
