"""(1) Bulk registration through the import path, against a raw COPY of the same event rows.

Each run: a fresh registry database with its migrations and the dataset's region rows (not
timed), then ``importer.import_file`` on every generated file in a fresh process, exactly as
``tpa import households`` calls it (all or nothing, batches of 500 households per transaction,
each written in bulk). Timed: parse + validate + write of all files.

Limit: the event rows that import wrote, dumped with ``COPY ... TO STDOUT (FORMAT binary)`` (not
timed) and loaded with ``COPY ... FROM STDIN (FORMAT binary)`` into an empty table
``(LIKE events INCLUDING ALL)``: the same columns, constraints and indexes as the event store,
without its trigger. A bare table (columns only) is shown as well, for context. The import also
writes the vault, ``active_persons`` and the import record; COPY writes only the events."""

from __future__ import annotations

from .context import Ctx
from .infra import log
from .report import Row, Target, fmt

SECTION = "1 bulk registration"


def run(ctx: Ctx) -> None:
    ds = ctx.dataset
    imports, limits = [], []
    for r in range(ctx.repeat):
        name = f"bench_registry_r{r}"
        dsn = ctx.fresh_db("registry", name, with_regions=True)
        log(f"registration run {r + 1}/{ctx.repeat}: importing {ds.households} households")
        res = ctx.worker("import-files", {"dsn": dsn, "files": ds.files, "hmac_key": ctx.infra.hmac_key})
        lim = ctx.worker("copy-limit", {"dsn": dsn})
        if lim["events"] != res["events"]:
            raise RuntimeError(f"COPY saw {lim['events']} events, the import wrote {res['events']}")
        imports.append(res)
        limits.append(lim)
        log(f"  import {res['seconds']:.1f}s ({res['events'] / res['seconds']:.0f} events/s), "
            f"COPY {lim['indexed_seconds']:.2f}s ({lim['events'] / lim['indexed_seconds']:.0f} events/s)")
        if ctx.registry_db and ctx.registry_db != name:
            ctx.infra.drop_database(ctx.registry_db)
        ctx.registry_db = name
    ctx.registry_events = imports[-1]["events"]
    ctx.timings["import_seconds"] = sorted(x["seconds"] for x in imports)[len(imports) // 2]

    events = [x["events"] / x["seconds"] for x in imports]
    copy_rates = [x["events"] / x["indexed_seconds"] for x in limits]
    rep = ctx.report
    rep.add(Row(SECTION, "households/s (import path, end to end)", "hh/s",
                [x["households"] / x["seconds"] for x in imports]))
    events_row = rep.add(Row(SECTION, "events/s (import path, end to end)", "events/s", events,
                             "raw COPY of the same rows into an empty events-like table", copy_rates))
    rep.add(Row(SECTION, "events/s, write phase only (no parse/validate)", "events/s",
                [x["events"] / x["stages"]["write"] for x in imports],
                "raw COPY, same", copy_rates))
    rep.add(Row(SECTION, "raw COPY into a bare table (no indexes)", "events/s",
                [x["events"] / x["bare_seconds"] for x in limits], note="context"))
    for stage in ("parse", "validate", "write"):
        rep.add(Row(SECTION, f"time: {stage}", "s", [x["stages"][stage] for x in imports]))
    rep.add(Row(SECTION, "time: import total", "s", [x["seconds"] for x in imports]))
    rep.add(Row(SECTION, "events written", "events", [float(x["events"]) for x in imports]))
    rep.extra.setdefault("dataset", ds.to_json())["events"] = imports[-1]["events"]

    ratio = events_row.ratio
    missed = ratio is not None and ratio < 0.5
    rep.targets.append(Target("Bulk registration >= 0.5 x raw COPY events/s",
                              f"{fmt(events_row.value)} vs {fmt(events_row.limit)} events/s = {fmt(ratio, 'ratio')} x",
                              None if ratio is None else not missed))
    if ctx.want_profile(missed):
        path = ctx.profile_path("import")
        name = "bench_registry_profile"
        dsn = ctx.fresh_db("registry", name, with_regions=True)
        res = ctx.worker("import-files", {"dsn": dsn, "files": ds.files, "hmac_key": ctx.infra.hmac_key,
                                          "profile": str(path)})
        ctx.infra.drop_database(name)
        stages = res["stages"]
        total = res["seconds"]
        ctx.attach_profile("bulk registration (import path)", path,
                           f"One extra profiled run (pyinstrument, not counted above): {total:.1f}s, of which parse "
                           f"{stages['parse'] / total:.0%}, validate {stages['validate'] / total:.0%}, write "
                           f"{stages['write'] / total:.0%}. The heaviest call paths:")
