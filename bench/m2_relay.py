"""(2) Relay: events/s published from the registry's store, against raw aiokafka produce of the
same messages to the same broker.

Each run starts from an empty broker (the in-memory tansu restarted). The relay is
``eventkit.relay.Relay`` as ``tpa serve registry`` builds it (settings defaults, an SDK tracer
provider, instrumented asyncpg), in a fresh process, from checkpoint 0 to the store's head; its
topics exist before the clock starts. Timed: from ``run()`` to the checkpoint at the head (producer
start and the relay's broker data-loss checks included).

Limit: the records the relay wrote, read back from its topics (same keys, values and headers;
not timed), produced by a plain ``AIOKafkaProducer`` with the relay's settings (acks=all, linger
5 ms, no idempotence) to fresh topics with the same partition count: every ``send()`` issued,
then all acknowledgements awaited. Producer start included, as for the relay."""

from __future__ import annotations

from .context import Ctx
from .infra import log
from .report import Row, Target, fmt

SECTION = "2 relay"


def run(ctx: Ctx) -> None:
    assert ctx.registry_db, "the relay needs the registration measurement first"
    dsn = ctx.infra.dsn(ctx.registry_db)
    bootstrap = ctx.infra.broker.bootstrap_servers
    relays, limits = [], []
    for r in range(ctx.repeat):
        ctx.infra.restart_broker()
        log(f"relay run {r + 1}/{ctx.repeat}")
        res = ctx.worker("relay", {"dsn": dsn, "bootstrap": bootstrap})
        lim = ctx.worker("produce-limit", {"bootstrap": bootstrap, "topics": res["topics"], "run": r,
                                           "expected": res["events"]})
        if lim["events"] != res["events"]:
            raise RuntimeError(f"the relay's topics hold {lim['events']} records, the store {res['events']} events")
        relays.append(res)
        limits.append(lim)
        log(f"  relay {res['events'] / res['seconds']:.0f} events/s, raw produce "
            f"{lim['events'] / lim['seconds']:.0f} events/s")
    ctx.timings["relay_seconds"] = sorted(x["seconds"] for x in relays)[len(relays) // 2]
    ctx.report.extra["relay_topics"] = relays[-1]["topics"]
    rep = ctx.report
    row = rep.add(Row(SECTION, "events/s published (store -> broker, acked)", "events/s",
                      [x["events"] / x["seconds"] for x in relays],
                      "raw aiokafka produce of the same records", [x["events"] / x["seconds"] for x in limits]))
    rep.add(Row(SECTION, "time: publish the whole store", "s", [x["seconds"] for x in relays],
                "raw produce", [x["seconds"] for x in limits], higher_is_better=False))
    rep.add(Row(SECTION, "MB/s of record values+keys (raw produce)", "MB/s",
                [x["bytes"] / x["seconds"] / 1e6 for x in limits], note="context"))
    ratio = row.ratio
    missed = ratio is not None and ratio < 0.5
    rep.targets.append(Target("Relay >= 0.5 x raw produce",
                              f"{fmt(row.value)} vs {fmt(row.limit)} events/s = {fmt(ratio, 'ratio')} x",
                              None if ratio is None else not missed))
    if ctx.want_profile(missed):
        # The profiled run also leaves the broker holding the relay's topics once, for the projections.
        ctx.infra.restart_broker()
        path = ctx.profile_path("relay")
        res = ctx.worker("relay", {"dsn": dsn, "bootstrap": bootstrap, "profile": str(path)})
        ctx.attach_profile("relay", path, f"One extra profiled relay run ({res['events'] / res['seconds']:.0f} "
                                          "events/s under the profiler).")
    if not all(x.get("raw_topics_deleted") for x in limits):
        ctx.report.note("the broker could not delete the raw-produce topics; they stayed in its memory")
