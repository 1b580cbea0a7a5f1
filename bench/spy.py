"""Profiles of running service processes with py-spy (sampling, attaches by pid; no change to the
services). Used where a target is missed in a service process (projections, gateway)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from .context import Ctx


def pyspy_binary() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def profile_services(ctx: Ctx, label: str, services: list[str], action: Callable[[], Any], summary: str) -> None:
    """Sample ``services`` with py-spy while ``action()`` runs; attach one profile per service."""
    pyspy = pyspy_binary()
    if pyspy is None:
        ctx.report.note(f"no profile of {label}: py-spy is not installed (pip install py-spy, or the bench extra)")
        return
    spies: dict[str, tuple[subprocess.Popen, Path]] = {}
    for name in services:
        svc = ctx.infra.services.get(name)
        if svc is None:
            continue
        path = ctx.profile_path(f"{label}-{name}".replace(" ", "-"))
        folded = path.with_suffix(".folded")
        spies[name] = (subprocess.Popen([pyspy, "record", "--pid", str(svc.proc.pid), "--format", "raw",
                                         "--rate", "250", "--full-filenames", "--nonblocking",
                                         "--output", str(folded)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE), path)
    time.sleep(1.0)
    for name, (proc, _) in list(spies.items()):
        if proc.poll() is not None:
            ctx.report.note(f"no profile of {name} for {label}: py-spy could not attach "
                            f"({proc.stderr.read().decode(errors='replace')[-300:]})")
            del spies[name]
    try:
        action()
    finally:
        for proc, _ in spies.values():
            proc.send_signal(signal.SIGINT)
        for proc, _ in spies.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    for name, (_, path) in spies.items():
        folded = path.with_suffix(".folded")
        if not folded.exists():
            ctx.report.note(f"no profile of {name} for {label}: py-spy wrote nothing")
            continue
        s = summarise_folded(folded.read_text())
        path.write_text(f"py-spy, {s['samples']:.0f} samples of the {name} process.\n\n"
                        "TPA functions, time in them and below (inclusive):\n\n"
                        + "\n".join(f"{share:6.1%}  {frame}" for frame, share in s["top_inclusive"])
                        + "\n\nOwn time per function:\n\n"
                        + "\n".join(f"{share:6.1%}  {frame}" for frame, share in s["top_self"]) + "\n")
        path.with_suffix(".json").write_text(json.dumps({"by_package": s["by_package"]}))
        ctx.attach_profile(f"{label}: {name} process", path, summary, top_lines=25)


def _package(frame: str) -> str:
    from .worker import package_of_path

    m = re.search(r"\((.*?)(?::\d+)?\)$", frame)
    path = m.group(1) if m else ""
    name = frame.split(" (", 1)[0]
    if name in ("select", "EpollSelector.select", "epoll.poll") or name.endswith(".select"):
        return "event loop idle (waiting on I/O)"
    return package_of_path(path) or "other"


def summarise_folded(text: str) -> dict[str, Any]:
    """Own time per function and per package from py-spy's folded stacks (``a;b;c count``)."""
    own: dict[str, float] = {}
    packages: dict[str, float] = {}
    inclusive: dict[str, float] = {}  # TPA functions, time spent in them and below
    total = 0.0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = float(count)
        total += n
        frames = stack.split(";")
        leaf = frames[-1]
        own[leaf] = own.get(leaf, 0) + n
        pkg = _package(leaf)
        packages[pkg] = packages.get(pkg, 0) + n
        # One entry per function (file without the line), the process's entry point left out.
        for frame in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            if _package(frame).startswith("tpa:") and "services/cli.py" not in frame:
                inclusive[frame] = inclusive.get(frame, 0) + n
    denom = total or 1.0
    return {"samples": total,
            "top_inclusive": sorted(((k, v / denom) for k, v in inclusive.items()), key=lambda kv: -kv[1])[:25],
            "top_self": sorted(((k, v / denom) for k, v in own.items()), key=lambda kv: -kv[1])[:40],
            "by_package": [{"package": k, "seconds": v, "share": v / denom}
                           for k, v in sorted(packages.items(), key=lambda kv: -kv[1])]}
