"""(6) Peer: the same bulk registration through the ``eventsourcing`` library's PostgreSQL
application (``bench.peer_app``), one aggregate per household, on the same PostgreSQL server.

The peer gets the events TPA's import recorded (the same households, event types and payloads),
read from the registry database before the timed part: it parses no file, validates nothing,
has no vault and no duplicate-person check. Two ways of saving, both measured:
``save()`` per household (the library's usual command-then-save) and 50 households per
``save()`` (one transaction, as the TPA import's batches). TPA / peer uses the import path's
end-to-end events/s and the faster of the two peer figures."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from .context import Ctx
from .infra import log
from .report import Row, Target, fmt

SECTION = "6 peer (eventsourcing)"


async def _dump_households(dsn: str, limit: int, path: Path) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        ids = [r["stream_id"] for r in await conn.fetch(
            "SELECT stream_id FROM events WHERE stream_type = 'household' AND version = 1"
            " ORDER BY global_position LIMIT $1", limit)]
        rows = await conn.fetch("SELECT stream_id, event_type, data::text AS data FROM events"
                                " WHERE stream_id = ANY($1::text[]) ORDER BY global_position", ids)
    finally:
        await conn.close()
    by_id: dict[str, list] = {i: [] for i in ids}
    for r in rows:
        by_id[r["stream_id"]].append([r["event_type"], json.loads(r["data"])])
    path.write_text(json.dumps([{"id": i, "events": e} for i, e in by_id.items()], ensure_ascii=False))
    return sum(len(e) for e in by_id.values())


def run(ctx: Ctx) -> None:
    assert ctx.registry_db, "the peer needs the registration measurement first"
    path = ctx.infra.state_dir / "peer-households.json"
    limit = min(ctx.args.peer_households, ctx.dataset.households)
    events = asyncio.run(_dump_households(ctx.infra.dsn(ctx.registry_db), limit, path))
    pg = {"host": ctx.infra.pg.host, "port": ctx.infra.pg.port, "user": ctx.infra.pg.user}
    results: dict[str, list[dict]] = {"each": [], "batch": []}
    for r in range(ctx.repeat):
        for mode in ("each", "batch"):
            name = f"bench_peer_{mode}_r{r}"
            ctx.fresh_db(None, name)
            log(f"peer run {r + 1}/{ctx.repeat} ({mode}): {limit} households, {events} events")
            res = ctx.worker("peer", {"pg": {**pg, "dbname": name}, "households": str(path), "mode": mode})
            if res["stored_events"] != res["events"]:
                raise RuntimeError(f"peer stored {res['stored_events']} of {res['events']} events")
            results[mode].append(res)
            log(f"  {res['events'] / res['seconds']:.0f} events/s")
            if r < ctx.repeat - 1 or mode == "each":
                ctx.infra.drop_database(name)
            else:
                ctx.report.extra.setdefault("peer_database", name)
    rep = ctx.report
    note = f"{limit} households" + (f" of {ctx.dataset.households}" if limit < ctx.dataset.households else "")
    each = rep.add(Row(SECTION, "events/s, save() per household", "events/s",
                       [x["events"] / x["seconds"] for x in results["each"]], note=note))
    batch = rep.add(Row(SECTION, "events/s, 50 households per save()", "events/s",
                        [x["events"] / x["seconds"] for x in results["batch"]], note=note))
    rep.add(Row(SECTION, "households/s, save() per household", "hh/s",
                [x["households"] / x["seconds"] for x in results["each"]]))
    tpa = rep.find("1 bulk registration", "events/s (import path, end to end)")
    tpa_write = rep.find("1 bulk registration", "events/s, write phase only (no parse/validate)")
    best = max(each.value or 0, batch.value or 0)
    if tpa is None or not best:
        return
    rep.add(Row(SECTION, "TPA import / peer (best of the two)", "x", [tpa.value / best],
                note="TPA end to end incl. parse and validation; the peer writes pre-parsed events"))
    if tpa_write is not None:
        rep.add(Row(SECTION, "TPA write phase / peer (best of the two)", "x", [tpa_write.value / best]))
    ratio = tpa.value / best
    missed = ratio < 10
    rep.targets.append(Target(">= 10 x the peer's bulk registration rate",
                              f"TPA {fmt(tpa.value)} events/s vs peer {fmt(best)} events/s = {ratio:.2f} x",
                              not missed, note=note))
    if ctx.want_profile(missed):
        name = "bench_peer_profile"
        ctx.infra.fresh_database(name)
        prof = ctx.profile_path("peer")
        mode = "batch" if (batch.value or 0) >= (each.value or 0) else "each"
        res = ctx.worker("peer", {"pg": {**pg, "dbname": name}, "households": str(path), "mode": mode,
                                  "profile": str(prof)})
        ctx.infra.drop_database(name)
        ctx.attach_profile(f"peer ({mode})", prof, f"One extra profiled peer run ({mode}, "
                           f"{res['events'] / res['seconds']:.0f} events/s under the profiler), for comparison "
                           "with the TPA import's profile.")
