"""``python -m bench`` (also ``tpa bench`` and ``make bench``): run the measurements of issue 8
on embedded infrastructure the run starts and stops itself, print a table, and write
``<out>/<date>-<machine>-<size>.json`` and ``.md``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

MEASUREMENTS = ("registration", "peer", "relay", "projections", "gateway", "freshness", "resources")
DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="county",
                   help="county (20 000 households), province (1 000 000) or a number of households")
    p.add_argument("--repeat", type=int, default=3, help="runs per figure; each figure is their median")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="folder of the result files")
    p.add_argument("--only", help=f"comma-separated subset of: {', '.join(MEASUREMENTS)}")
    p.add_argument("--skip", help="comma-separated measurements to leave out")
    p.add_argument("--format", choices=("xlsx", "csv"), default="xlsx",
                   help="import file format (default xlsx, what villages upload and `tpa demo-data` writes)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--peer-households", type=int, default=50_000,
                   help="at most this many households go through the peer (its rate is per event)")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="profile one extra run where a target is missed (auto), always, or never")
    p.add_argument("--gateway-seconds", type=float, default=5.0,
                   help="seconds per step of the gateway's saturation ladder")
    p.add_argument("--freshness-rates", default="25,50,100,200,300",
                   help="interactive commands per second tried by the freshness measurement")
    p.add_argument("--freshness-seconds", type=float, default=20.0, help="seconds of load per rate")
    p.add_argument("--no-rebuilds", action="store_true",
                   help="projections: measure the cold start only, not one `tpa projections rebuild` per read "
                        "model (each is a full catch-up: at province size, hours); the targets then use the "
                        "cold-start rates")
    p.add_argument("--machine", help="machine name in the result file names (default: from CPU, cores, RAM)")
    p.add_argument("--state-dir", help="where PostgreSQL data and logs go (default: a new temporary folder)")
    p.add_argument("--keep-state", action="store_true", help="keep the state folder at the end")
    return p


def _selected(args: argparse.Namespace) -> list[str]:
    chosen = [m.strip() for m in args.only.split(",")] if args.only else list(MEASUREMENTS)
    skipped = {m.strip() for m in (args.skip or "").split(",") if m.strip()}
    unknown = [m for m in [*chosen, *skipped] if m not in MEASUREMENTS]
    if unknown:
        raise SystemExit(f"unknown measurement(s): {', '.join(unknown)}; known: {', '.join(MEASUREMENTS)}")
    return [m for m in MEASUREMENTS if m in chosen and m not in skipped]


_signalled: list[int] = []


def _on_signal(signum: int, _frame: Any) -> None:
    """Ctrl-C and SIGTERM: stop the run (the finally block stops every process it started). The
    children in the terminal's process group get Ctrl-C too and may die first: an error they
    cause is then an interruption, not a failure."""
    _signalled.append(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def main(args: list[str] | None = None) -> int:
    """Run the benchmark; ``args`` are the command-line arguments (default: ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if args is None else args)
    args = build_parser().parse_args(argv)
    from . import data, machine
    from .context import Ctx
    from .infra import Infra, log
    from .report import Report

    selected = _selected(args)
    size = data.parse_size(args.size)
    if args.repeat < 1:
        raise SystemExit("--repeat must be at least 1")
    # The services and workers must import this checkout, whatever the current directory.
    repo = str(Path(__file__).resolve().parent.parent)
    os.environ["PYTHONPATH"] = repo + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}

    infra = Infra.create(args.state_dir, args.keep_state)
    report: Report | None = None
    ctx: Ctx | None = None
    interrupted = False
    current = "start"
    try:
        infra.start()
        desc = machine.describe(infra.pg)
        label = args.size if args.size in ("county", "province") else f"{size}-households"
        stem = f"{time.strftime('%Y-%m-%d')}-{args.machine or machine.slug(desc)}-{label}"
        meta = {"machine": desc, "run": {
            "size_label": args.size, "households": size, "repeat": args.repeat, "measurements": selected,
            "argv": argv, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "file_stem": stem,
            "import_format": args.format}}
        report = Report(Path(args.out), meta)
        log(f"generating {size} households ({args.format})")
        dataset = data.generate(size, args.seed, args.format, infra.state_dir / "data", log)
        report.extra["dataset"] = dataset.to_json()
        ctx = Ctx(args, infra, report, dataset, args.repeat, args.profile, Path(args.out) / "profiles")
        needs_registry = {"relay", "projections", "gateway", "freshness", "peer", "resources"}
        if "registration" not in selected and needs_registry & set(selected):
            selected.insert(0, "registration")  # everything after it needs the imported register
            report.note("registration was added: the other measurements need the imported register")
        for name in selected:
            current = name
            log(f"== {name}")
            _module(name).run(ctx)
        current = ""
        return 0
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: stopping everything the run started", file=sys.stderr)
        return 130
    except Exception as exc:
        if not _signalled:
            if report is not None:
                report.meta["run"]["failed"] = f"{current}: {type(exc).__name__}: {str(exc)[:2000]}"
            raise
        interrupted = True
        print("\ninterrupted: stopping everything the run started", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        try:
            if ctx is not None:
                from .targets import complete

                complete(ctx, selected)
            if report is not None:
                infra.note_peaks()
                report.meta["run"]["interrupted"] = interrupted
                report.meta["run"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
                if report.rows or report.targets:
                    json_path, md_path = report.write()
                    print(f"\nresults: {json_path}\nsummary: {md_path}")
        finally:
            infra.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _module(name: str) -> Any:
    import importlib

    modules = {"registration": "m1_registration", "relay": "m2_relay", "projections": "m3_projections",
               "freshness": "m4_freshness", "gateway": "m5_gateway", "peer": "m6_peer",
               "resources": "m7_resources"}
    return importlib.import_module(f"bench.{modules[name]}")
