"""The targets of issue 8, every one reported: met, not met, or not evaluated (with why)."""

from __future__ import annotations

from .context import Ctx
from .data import PROVINCE_SIZE
from .report import Target

# (prefix of the target text, measurement that evaluates it), in the order.
TARGETS = (
    ("Bulk registration >= 0.5 x raw COPY events/s", "registration"),
    ("Province (1 M households) registered and fully projected in <= 10 min on 2 cores", "projections"),
    ("Relay >= 0.5 x raw produce", "relay"),
    ("Projection catch-up >= 0.5 x raw consume + COPY", "projections"),
    ("Freshness p99 < 1 s at >= 300 interactive commands/s", "freshness"),
    ("Status check p99 < 20 ms", "gateway"),
    ("100 000-ID comparison < 5 s", "gateway"),
    (">= 10 x the peer's bulk registration rate", "peer"),
)


def province_target(ctx: Ctx) -> None:
    """Registered and fully projected: import, relay and every service's projections, one after
    another. At province size the measured times; below it, the province's events divided by the
    measured rates (start-up costs left out, which at small sizes would dominate a scaled time)."""
    t = ctx.timings
    text = TARGETS[1][0]
    if not all(k in t for k in ("import_seconds", "relay_seconds", "projection_seconds", "projection_rates")):
        return
    cpus = ctx.report.meta["machine"].get("usable_cpus")
    note = ("phases measured one after another (import, then relay, then each service's cold-start catch-up, "
            "the slowest projection of a service deciding); in production they overlap and share the same cores")
    if ctx.dataset.households >= PROVINCE_SIZE:
        total = t["import_seconds"] + t["relay_seconds"] + t["projection_seconds"]
        detail = (f"import {t['import_seconds']:.0f}s + relay {t['relay_seconds']:.0f}s + projections "
                  f"{t['projection_seconds']:.0f}s = {total / 60:.1f} min")
        met = total <= 600 and (cpus or 0) <= 2
        if cpus and cpus > 2:
            note += f"; this machine has {cpus} usable CPUs, not 2"
        ctx.report.targets.append(Target(text, detail, met, note))
        return
    rows = {name: ctx.report.find(section, name) for section, name in (
        ("1 bulk registration", "events/s (import path, end to end)"),
        ("2 relay", "events/s published (store -> broker, acked)"))}
    rates = [r.value for r in rows.values() if r is not None]
    if len(rates) < 2 or not all(rates) or not ctx.registry_events:
        return
    events = ctx.registry_events / ctx.dataset.households * PROVINCE_SIZE
    parts = {"import": events / rates[0], "relay": events / rates[1]}
    for service, (rate, n) in t["projection_rates"].items():
        if rate:
            parts[service] = events * (n / ctx.registry_events) / rate
    total = sum(parts.values())
    detail = " + ".join(f"{k} {v / 60:.0f} min" for k, v in parts.items()) + f" = {total / 60:.0f} min"
    ctx.report.targets.append(Target(
        text, f"estimate for {events / 1e6:.1f} M events: {detail}", None,
        f"not evaluated below province size ({ctx.dataset.households:,} households): an estimate from the rates "
        f"measured here, not a measurement; {note}"))


def complete(ctx: Ctx, selected: list[str]) -> None:
    """Add every target not evaluated in this run, and order them as the issue lists them."""
    province_target(ctx)
    targets = ctx.report.targets
    for prefix, measurement in TARGETS:
        if not any(x.text.startswith(prefix) for x in targets):
            why = "measurement not selected in this run" if measurement not in selected else \
                "the measurement did not produce the figures it needs"
            targets.append(Target(prefix, "-", None, why))
    order = {prefix: i for i, (prefix, _) in enumerate(TARGETS)}
    targets.sort(key=lambda x: next((i for p, i in order.items() if x.text.startswith(p)), len(order)))
