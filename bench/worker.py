"""One measured piece of work in a fresh process: ``python -m bench.worker TASK`` reads its
arguments as JSON on stdin and prints one JSON line with its result, always including
``maxrss_kib`` (the process's peak resident set size). The harness (``bench.infra``) starts
these processes; they are not meant to be run by hand, although they can be."""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import resource
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

TASKS: dict[str, Any] = {}


def task(fn: Any) -> Any:
    TASKS[fn.__name__.replace("_", "-")] = fn
    return fn


@asynccontextmanager
async def profiled(path: str | None) -> AsyncIterator[None]:
    """pyinstrument around the block when ``path`` is given (text report written there)."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(async_mode="enabled", interval=0.002)
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        write_profile(profiler, path)


def write_profile(profiler: Any, path: str) -> None:
    """The text report, and next to it (``.json``) the time by package: where the time goes."""
    Path(path).write_text(profiler.output_text(unicode=True, color=False, show_all=False))
    root = profiler.last_session.root_frame() if profiler.last_session else None
    Path(path).with_suffix(".json").write_text(json.dumps(time_by_package(root), indent=1))


_REPO = str(Path(__file__).resolve().parent.parent) + "/"


def _category(frame: Any) -> str | None:
    """Who a frame's own time belongs to; None when it inherits its caller's (built-ins)."""
    fn, path = frame.function or "", frame.file_path or ""
    if fn == "[await]":
        return "awaiting I/O (PostgreSQL, Kafka, HTTP, threads)"
    if fn == "epoll.poll" or fn.startswith("select"):
        return "event loop idle (waiting on I/O)"
    return package_of_path(path)


def package_of_path(path: str) -> str | None:
    """The package a source file belongs to (library, TPA service or module, stdlib), if known."""
    if "/site-packages/" in path:
        return "library: " + path.split("/site-packages/", 1)[1].split("/", 1)[0].replace(".py", "")
    if path.startswith(_REPO):
        parts = path[len(_REPO):].split("/")
        return "tpa: " + "/".join(parts[:2] if parts[0] == "services" else parts[:1]).replace(".py", "")
    if "/lib/python3" in path:
        return "stdlib: " + path.split("/lib/python3", 1)[1].split("/", 2)[1].replace(".py", "")
    return None


def time_by_package(root: Any) -> dict[str, Any]:
    totals: dict[str, float] = {}

    def walk(frame: Any, inherited: str) -> None:
        category = _category(frame) or inherited
        own = frame.time - sum(c.time for c in frame.children)
        if own > 0:
            totals[category] = totals.get(category, 0.0) + own
        for child in frame.children:
            walk(child, category)

    if root is not None:
        walk(root, "other")
    total = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])
    return {"total_seconds": total, "by_package": [{"package": k, "seconds": v, "share": v / total}
                                                   for k, v in ranked]}


SPOOL_BYTES = 512 * 2 ** 20  # data a worker keeps in memory before spilling to a temporary file


def _spool() -> Any:
    import tempfile

    return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)


# -- bulk registration through the import path ----------------------------------------------------

@task
async def import_files(args: dict[str, Any]) -> dict[str, Any]:
    """``importer.import_file`` on each file, as ``tpa import households`` calls it."""
    import asyncpg

    from eventkit.store import EventStore
    from services.registry import importer
    from services.registry.commands import Registry

    pool = await asyncpg.create_pool(args["dsn"], min_size=1, max_size=4)  # as `tpa import` does
    registry = Registry(EventStore(pool), args["hmac_key"].encode())
    stages = {"parse": 0.0, "validate": 0.0, "write": 0.0}
    reports = []
    total = 0.0
    try:
        async with profiled(args.get("profile")):
            for path in args["files"]:
                data = Path(path).read_bytes()
                marks: dict[str, float] = {}

                def progress(stage: str, done: int, todo: int, marks: dict[str, float] = marks) -> None:
                    marks.setdefault(stage, time.perf_counter())

                started = time.perf_counter()
                report = await importer.import_file(registry, pool, data, file_name=Path(path).name,
                                                    actor="cli:bench", batch_size=args.get("batch_size", importer.BATCH_SIZE),
                                                    progress=progress, max_bytes=None)
                ended = time.perf_counter()
                total += ended - started
                validating = marks.get("validating", started)
                importing = marks.get("importing", ended)
                stages["parse"] += validating - started
                stages["validate"] += importing - validating
                stages["write"] += ended - importing
                if report.status != "imported":
                    raise RuntimeError(f"{path}: {report.summary()}: {[e.to_json() for e in report.errors[:5]]}")
                reports.append({"households": report.households_imported, "members": report.members_imported})
        events = await pool.fetchval("SELECT count(*) FROM events")
    finally:
        await pool.close()
    return {"seconds": total, "stages": stages, "events": events,
            "households": sum(r["households"] for r in reports), "members": sum(r["members"] for r in reports)}


@task
async def copy_limit(args: dict[str, Any]) -> dict[str, Any]:
    """The same event rows, COPYed (binary) into empty tables: one like ``events`` with its
    constraints and indexes (no triggers), and one bare (columns only)."""
    import asyncpg

    conn = await asyncpg.connect(args["dsn"])
    try:
        buf = _spool()  # a province's events do not fit in memory: spilled to disk beyond SPOOL_BYTES
        await conn.copy_from_query("SELECT * FROM events ORDER BY global_position", output=buf, format="binary")
        size = buf.tell()
        rows = await conn.fetchval("SELECT count(*) FROM events")
        out: dict[str, Any] = {"events": rows, "bytes": size}
        for name, like in (("indexed", "INCLUDING ALL"), ("bare", "")):
            table = f"bench_copy_{name}"
            await conn.execute(f"DROP TABLE IF EXISTS {table}")
            await conn.execute(f"CREATE TABLE {table} (LIKE events {like})")
            buf.seek(0)
            started = time.perf_counter()
            await conn.copy_to_table(table, source=buf, format="binary")
            out[f"{name}_seconds"] = time.perf_counter() - started
            await conn.execute(f"DROP TABLE {table}")
        return out
    finally:
        await conn.close()


@task
async def copy_rows(args: dict[str, Any]) -> dict[str, Any]:
    """The rows a projection wrote (its tables plus its tracking rows), COPYed into empty
    tables of the same definition (constraints and indexes included)."""
    import asyncpg

    conn = await asyncpg.connect(args["dsn"])
    total_rows, seconds, size = 0, 0.0, 0
    try:
        sources = [(t, "") for t in args["tables"]]
        if args.get("projection"):
            sources.append(("projection_streams", " WHERE projection = '"
                            + args["projection"].replace("'", "''") + "'"))
        for i, (table, where) in enumerate(sources):
            # Stored generated columns are computed by PostgreSQL on insert: not copied, computed again.
            columns = [r["attname"] for r in await conn.fetch(
                "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
                " AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", table)]
            listed = ", ".join(f'"{c}"' for c in columns)
            buf = _spool()
            await conn.copy_from_query(f"SELECT {listed} FROM {table}{where}", output=buf, format="binary")
            size += buf.tell()
            target = f"bench_rows_{i}"
            await conn.execute(f"DROP TABLE IF EXISTS {target}")
            await conn.execute(f"CREATE TABLE {target} (LIKE {table} INCLUDING ALL)")
            buf.seek(0)
            started = time.perf_counter()
            result = await conn.copy_to_table(target, source=buf, format="binary", columns=columns)
            seconds += time.perf_counter() - started
            total_rows += int(result.split()[-1])
            await conn.execute(f"DROP TABLE {target}")
    finally:
        await conn.close()
    return {"seconds": seconds, "rows": total_rows, "bytes": size}


# -- relay and its limit ------------------------------------------------------------------------------

async def _topics_of_store(pool: Any, service: str) -> list[str]:
    from contracts import topics as ct

    rows = await pool.fetch("SELECT DISTINCT stream_type FROM events")
    return sorted(ct.topic_name(service, r["stream_type"]) for r in rows)


@task
async def relay(args: dict[str, Any]) -> dict[str, Any]:
    """The registry's relay (as ``tpa serve registry`` configures it: settings defaults, an SDK
    tracer provider, instrumented asyncpg) publishing the whole store from checkpoint 0."""
    import asyncpg

    from eventkit.kafka import ensure_topics
    from eventkit.relay import Relay
    from eventkit.settings import load_settings
    from eventkit.store import EventStore
    from eventkit.telemetry import instrument_libraries, setup_tracing

    setup_tracing("registry")
    instrument_libraries()
    s = load_settings("registry")
    pool = await asyncpg.create_pool(args["dsn"], min_size=1, max_size=10)  # as ServiceRuntime does
    try:
        await pool.execute("DELETE FROM relay_partition_offsets WHERE relay = 'registry'")
        await pool.execute("DELETE FROM relay_checkpoint WHERE relay = 'registry'")
        store = EventStore(pool)
        head = await store.head_position()
        events = await pool.fetchval("SELECT count(*) FROM events")
        topics = await _topics_of_store(pool, "registry")
        await ensure_topics(args["bootstrap"], topics, partitions=s.kafka_topic_partitions,
                            replication_factor=s.kafka_replication_factor)
        r = Relay(name="registry", service="registry", store=store, bootstrap_servers=args["bootstrap"],
                  enable_idempotence=False, partitions=s.kafka_topic_partitions,
                  replication_factor=s.kafka_replication_factor, batch_size=s.relay_batch_size,
                  compression_type=s.kafka_compression_type, producer_batch_bytes=s.kafka_producer_batch_bytes,
                  poll_interval=s.relay_poll_interval, lost_data_check_interval=s.relay_lost_data_check_interval)
        async with profiled(args.get("profile")):
            started = time.perf_counter()
            running = asyncio.create_task(r.run())
            while r.stats.checkpoint < head:
                if running.done():
                    running.result()
                    raise RuntimeError("relay stopped")
                if time.perf_counter() - started > args.get("timeout", 3600):
                    raise RuntimeError(f"relay timed out at {r.stats.checkpoint}/{head}: {r.stats.last_error}")
                await asyncio.sleep(0.005)
            seconds = time.perf_counter() - started
        r.stop()
        try:
            await asyncio.wait_for(running, 15)
        except asyncio.TimeoutError:
            running.cancel()
        return {"seconds": seconds, "events": events, "topics": topics, "failures": r.stats.failures,
                "batch_size": s.relay_batch_size, "compression": s.kafka_compression_type,
                "producer_batch_bytes": s.kafka_producer_batch_bytes}
    finally:
        await pool.close()


async def _read_all(bootstrap: str, topics: list[str], max_records: int = 500, expected: int | None = None,
                    timeout: float = 3600.0, sink: Any = None) -> tuple[int, int, float]:
    """Every record of ``topics`` from the beginning (manual assignment, no group), each handed to
    ``sink`` if given; the number of records, their bytes (keys and values) and the seconds it
    took after the consumer connected. With ``expected``, reads until that many records arrived:
    tansu's end offsets can trail the records it holds, so they are only the stopping rule
    without it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                client_id="bench-raw-consumer", max_poll_records=max_records)
    await consumer.start()
    try:
        tps = []
        for t in topics:
            parts = consumer.partitions_for_topic(t)
            if parts is None:
                await consumer._client.force_metadata_update()  # noqa: SLF001 - fresh metadata
                parts = consumer.partitions_for_topic(t) or set()
            tps += [TopicPartition(t, p) for p in sorted(parts)]
        if not tps:
            return 0, 0, 0.0
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        await consumer.seek_to_beginning(*tps)
        count = size = 0
        started = time.perf_counter()
        remaining = {tp for tp in tps if ends[tp] > 0}
        while (count < expected) if expected is not None else remaining:
            batches = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            for tp, recs in batches.items():
                count += len(recs)
                for r in recs:
                    size += len(r.value or b"") + len(r.key or b"")
                    if sink is not None:
                        sink(r)
                if recs and recs[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
            if time.perf_counter() - started > timeout:
                raise RuntimeError(f"read {count} records of {expected} in {timeout:.0f}s")
        return count, size, time.perf_counter() - started
    finally:
        await consumer.stop()


@task
async def produce_limit(args: dict[str, Any]) -> dict[str, Any]:
    """The relay's messages (read back from its topics: same keys, values, headers) produced with
    a plain aiokafka producer configured as the relay's (``eventkit.kafka.new_producer``: acks=all,
    linger 5 ms, the same batch size and compression, no idempotence) to
    fresh topics with the same partition count on the same broker, all sent before awaiting.
    The records are read first (not timed) into memory, or into a temporary file beyond
    ``SPOOL_BYTES`` (then read back while producing, which only lowers the limit)."""
    import pickle

    from eventkit.kafka import ensure_topics, new_producer
    from eventkit.settings import load_settings

    s = load_settings("registry")
    raw_topics = {t: f"bench.raw.{args['run']}.{t}" for t in args["topics"]}
    spool = _spool()
    kept: list[tuple[str, bytes, bytes, list]] | None = []
    held = 0

    def sink(r: Any) -> None:
        nonlocal kept, held
        item = (raw_topics[r.topic], r.key, r.value, list(r.headers or ()))
        if kept is None:
            pickle.dump(item, spool)
            return
        kept.append(item)
        held += len(r.value or b"") + len(r.key or b"") + 200
        if held > SPOOL_BYTES:  # too big for memory: from now on everything goes to the file
            for k in kept:
                pickle.dump(k, spool)
            kept = None

    count, nbytes, _ = await _read_all(args["bootstrap"], args["topics"], expected=args.get("expected"), sink=sink)
    await ensure_topics(args["bootstrap"], raw_topics.values(), partitions=s.kafka_topic_partitions,
                        replication_factor=s.kafka_replication_factor)

    def messages() -> Any:
        if kept is not None:
            yield from kept
            return
        spool.seek(0)
        while True:
            try:
                yield pickle.load(spool)
            except EOFError:
                return

    started = time.perf_counter()
    # The relay's producer configuration (batch size, compression): the limit differs only in
    # having nothing to read from PostgreSQL and nothing to encode.
    producer = new_producer(args["bootstrap"], client_id="bench-raw-producer", enable_idempotence=False,
                            compression_type=s.kafka_compression_type, batch_bytes=s.kafka_producer_batch_bytes)
    await producer.start()
    sent = 0
    try:
        pending: collections.deque = collections.deque()
        for t, k, v, h in messages():
            pending.append(await producer.send(t, value=v, key=k, headers=h))
            sent += 1
            if len(pending) > 100_000:  # bounded memory; the producer's pipeline stays full
                await pending.popleft()
        await asyncio.gather(*pending)
        seconds = time.perf_counter() - started
    finally:
        await producer.stop()
    deleted = await _delete_topics(args["bootstrap"], list(raw_topics.values()))  # the broker keeps all in memory
    return {"seconds": seconds, "events": sent, "bytes": nbytes, "raw_topics_deleted": deleted,
            "streamed_from_disk": kept is None, "read": count}


async def _delete_topics(bootstrap: str, topics: list[str]) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, client_id="bench-admin")
    await admin.start()
    try:
        await admin.delete_topics(topics)
        return True
    except Exception:  # noqa: BLE001 - a broker without DeleteTopics keeps them; nothing else depends on it
        return False
    finally:
        await admin.close()


@task
async def consume_limit(args: dict[str, Any]) -> dict[str, Any]:
    """Raw consume of the topics from the beginning, no decoding (the projection runner's batch size)."""
    from eventkit.settings import load_settings

    s = load_settings("registry")
    count, size, seconds = await _read_all(args["bootstrap"], args["topics"], s.projection_batch_size,
                                           expected=args.get("expected"))
    return {"seconds": seconds, "messages": count, "bytes": size}


# -- the peer: eventsourcing's PostgreSQL application -------------------------------------------------

@task
def peer(args: dict[str, Any]) -> dict[str, Any]:
    """The same households' events through the ``eventsourcing`` library: one aggregate per
    household, ``Application`` with ``PERSISTENCE_MODULE=eventsourcing.postgres`` (its documented
    setup), saved one household per ``save()`` (``mode=each``) or ``batch`` households per
    ``save()`` (``mode=batch``, one transaction, like the TPA import's batches)."""
    from bench import peer_app

    households = json.loads(Path(args["households"]).read_text())
    limit = args.get("limit")
    if limit:
        households = households[:limit]
    app = peer_app.make_app(args["pg"])
    try:
        if args.get("profile"):
            from pyinstrument import Profiler

            profiler = Profiler(interval=0.002)
            profiler.start()
        started = time.perf_counter()
        events = peer_app.register_all(app, households, args.get("mode", "each"), args.get("batch", 50))
        seconds = time.perf_counter() - started
        if args.get("profile"):
            profiler.stop()
            write_profile(profiler, args["profile"])
        stored = peer_app.count_events(args["pg"])
    finally:
        app.close()
    return {"seconds": seconds, "events": events, "stored_events": stored, "households": len(households)}


@task
async def comparison_limit(args: dict[str, Any]) -> dict[str, Any]:
    """What a 100 000-ID comparison cannot avoid: HMAC of every ID and one indexed lookup of the
    hashes in the ledger (one query, rows fetched; no HTTP, no validation, no JSON answer)."""
    import hashlib
    import hmac

    import asyncpg

    ids = json.loads(Path(args["ids_file"]).read_text())
    key = args["hmac_key"].encode()
    conn = await asyncpg.connect(args["dsn"])
    try:
        started = time.perf_counter()
        hashes = [hmac.new(key, i.strip().upper().encode(), hashlib.sha256).hexdigest() for i in ids]
        rows = await conn.fetch(
            "SELECT m.id_hmac, m.household_id, m.member_id, h.village_code, h.status, m.active"
            " FROM ledger_members m JOIN ledger_households h USING (household_id)"
            " WHERE m.id_hmac = ANY($1::bpchar[])", hashes)
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"seconds": seconds, "ids": len(ids), "matched_rows": len(rows)}


# -- HTTP load -----------------------------------------------------------------------------------------

@task
async def http_load(args: dict[str, Any]) -> dict[str, Any]:
    """Closed-loop load: ``concurrency`` keep-alive connections each sending requests back to back
    for ``duration`` seconds (or ``count`` requests in total); latencies of each request."""
    from bench.httpclient import Connection

    bodies = [b.encode() if isinstance(b, str) else json.dumps(b).encode() for b in args.get("bodies") or [""]]
    headers = args.get("headers") or {}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    deadline = time.perf_counter() + args.get("duration", 1e9)
    count = args.get("count")
    issued = 0

    async def one(i: int) -> None:
        nonlocal issued
        conn = await Connection.open(args["host"], args["port"])
        try:
            while time.perf_counter() < deadline and (count is None or issued < count):
                body = bodies[issued % len(bodies)]
                issued += 1
                started = time.perf_counter()
                status, _ = await conn.request(args["method"], args["path"], headers, body)
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args["concurrency"])))
    elapsed = time.perf_counter() - started
    latencies.sort()
    return {"seconds": elapsed, "requests": len(latencies), "statuses": {str(k): v for k, v in statuses.items()},
            "latencies_ms": _percentiles([x * 1000 for x in latencies])}


def interleave(mix: dict[str, float], n: int) -> list[str]:
    """``n`` command kinds in the proportions of ``mix``, evenly spread (smooth weighted round
    robin: each kind gains its share per step, the one furthest ahead goes and pays 1)."""
    total = sum(mix.values())
    credit = dict.fromkeys(mix, 0.0)
    out = []
    for _ in range(n):
        for kind, share in mix.items():
            credit[kind] += share / total
        kind = max(credit, key=lambda k: credit[k])
        credit[kind] -= 1.0
        out.append(kind)
    return out


@task
async def freshness(args: dict[str, Any]) -> dict[str, Any]:
    """Open-loop load through the gateway at ``rate`` commands/s for ``duration`` s: each command
    is sent at its scheduled time whatever happened to the earlier ones (a pool of keep-alive
    connections grows as needed). For every 2xx, the time until monitoring's read model shows
    the change, polled in its database every ``poll`` s for all pending commands at once:

    * registration (a household in a village of its own): the village's row in
      ``village_households``, what ``GET /villages/{code}/households`` reads;
    * income update of an imported household: the new version in ``mon_risk_events``, what the
      return-risk rules read (``risk-facts``; the query API shows alerts, not incomes);
    * visit (a cadre's check-in): one more visit of that cadre at that household in
      ``mon_attendance`` than before (the load's earlier ones counted);
    * disbursement request: the disbursement's row in the dashboard's ``dash_payments``.
    """
    import asyncpg

    from bench.httpclient import Connection

    rate, duration = float(args["rate"]), float(args["duration"])
    headers = {**args["headers"], "Content-Type": "application/json"}
    queues = {"registration": list(reversed(args.get("registrations", []))),  # each taken in order
              "visit": list(reversed(args.get("visits", []))),
              "disbursement": list(reversed(args.get("disbursements", [])))}
    incomes = list(args.get("incomes", []))  # household ids
    cadres = args.get("cadres", [])
    year = args.get("year", 2024)
    n = int(rate * duration)
    kinds = interleave(args["mix"], n)
    for kind, queue in queues.items():
        if kinds.count(kind) > len(queue):
            raise ValueError(f"{kinds.count(kind)} {kind} commands planned, {len(queue)} given")
    if "income" in kinds and not incomes:
        raise ValueError("income updates planned, no household given")
    idle: list[Connection] = []
    opened = 0
    records: list[dict[str, Any]] = []
    pending_villages: dict[str, dict[str, Any]] = {}
    pending_versions: dict[tuple[str, int], dict[str, Any]] = {}
    pending_payments: dict[str, dict[str, Any]] = {}
    pending_visits: dict[tuple[str, str], list[dict[str, Any]]] = {}
    host, port = args["host"], args["port"]

    db = await asyncpg.connect(args["monitoring_dsn"])
    seen_visits: dict[tuple[str, str], int] = {  # visits recorded before this load
        (r["cadre_id"], r["household_id"]): r["n"] for r in await db.fetch(
            "SELECT cadre_id, household_id, count(*) AS n FROM mon_attendance WHERE kind = 'visit'"
            " AND cadre_id = ANY($1::text[]) GROUP BY 1, 2", [c["id"] for c in cadres])}

    def request_of(i: int, kind: str) -> tuple[str, str, bytes, dict[str, str], Any]:
        if kind == "registration":
            item = queues[kind].pop()
            return "POST", "/api/v1/households", json.dumps(item["body"]).encode(), headers, item
        if kind == "income":
            hid = incomes[i % len(incomes)]
            amount = 1000 + i % 5000
            return "PUT", f"/api/v1/households/{hid}/incomes/{year}", json.dumps({
                "wage": str(amount), "business": "0", "property": "0", "transfer": "800",
                "business_expenses": "0"}).encode(), headers, None
        if kind == "visit":
            item = queues[kind].pop()
            cadre = cadres[item["cadre"]]
            now = datetime.datetime.now(datetime.timezone.utc).isoformat()
            body = {"items": [{"client_event_id": str(uuid.uuid4()), "kind": "check_in", "occurred_at": now,
                               "visit_id": str(uuid.uuid4()), "household_id": item["household_id"],
                               "latitude": 36.0611, "longitude": 103.8343, "accuracy_m": 10}]}
            return ("POST", "/api/v1/attendance/batches", json.dumps(body).encode(),
                    {**cadre["headers"], "Content-Type": "application/json"}, (cadre["id"], item["household_id"]))
        body = queues["disbursement"].pop()
        return "POST", "/api/v1/disbursements", json.dumps(body).encode(), headers, None

    async def send(i: int, scheduled: float) -> None:
        nonlocal opened
        kind = kinds[i]
        rec: dict[str, Any] = {"kind": kind, "scheduled": scheduled}
        records.append(rec)
        method, path, body, hdrs, item = request_of(i, kind)
        conn = None
        while idle and conn is None:
            conn = idle.pop()
            if conn.stale:  # the server may have closed it: a failure there would be the client's
                conn.close()
                conn = None
        if conn is None:
            conn = await Connection.open(host, port)
            opened += 1
        rec["sent"] = time.perf_counter()
        try:
            status, data = await conn.request(method, path, hdrs, body)
        except Exception as exc:  # noqa: BLE001 - counted as an error
            rec["status"], rec["error"] = 0, repr(exc)
            conn.close()
            return
        rec["answered"] = time.perf_counter()
        rec["status"] = status
        idle.append(conn)
        if not 200 <= status < 300:
            rec["error"] = data[:300].decode(errors="replace")
            return
        answer = json.loads(data)
        if kind == "registration":
            pending_villages[item["village_code"]] = rec
        elif kind == "income":
            pending_versions[(answer["household_id"], int(answer["version"]))] = rec
        elif kind == "visit":
            result = answer["items"][0]
            if result.get("status") != "accepted":  # a 200 whose item was refused is a failed command
                rec["status"], rec["error"] = 422, json.dumps(result)[:300]
                return
            pending_visits.setdefault(item, []).append(rec)
        else:
            pending_payments[answer["id"]] = rec

    polls = 0
    stop_polling = asyncio.Event()

    def pending() -> bool:
        return bool(pending_villages or pending_versions or pending_payments or pending_visits)

    async def mark_seen(waiting: dict[Any, dict[str, Any]], sql: str, *params: Any,
                        key: Any = lambda r: r[0]) -> None:
        """The commands whose change the query finds (by ``key`` of its rows) are visible now."""
        rows = await db.fetch(sql, *params)
        seen = time.perf_counter()
        for r in rows:
            rec = waiting.pop(key(r), None)
            if rec is not None:
                rec["visible"] = seen

    async def poller() -> None:
        nonlocal polls
        poll = float(args.get("poll", 0.02))
        while not stop_polling.is_set() or pending():
            started = time.perf_counter()
            if pending_villages:
                await mark_seen(pending_villages, "SELECT village_code FROM village_households"
                                " WHERE village_code = ANY($1::text[]) AND households > 0", list(pending_villages))
            if pending_versions:
                keys = list(pending_versions)
                await mark_seen(pending_versions, "SELECT household_id, version FROM mon_risk_events"
                                " WHERE (household_id, version) IN (SELECT * FROM unnest($1::text[], $2::int[]))",
                                [k[0] for k in keys], [k[1] for k in keys], key=lambda r: (r[0], r[1]))
            if pending_payments:
                await mark_seen(pending_payments, "SELECT disbursement_id FROM dash_payments"
                                " WHERE disbursement_id = ANY($1::text[])", list(pending_payments))
            if pending_visits:
                keys = list(pending_visits)
                rows = await db.fetch("SELECT cadre_id, household_id, count(*) AS n FROM mon_attendance"
                                      " WHERE kind = 'visit' AND (cadre_id, household_id) IN"
                                      " (SELECT * FROM unnest($1::text[], $2::text[])) GROUP BY 1, 2",
                                      [k[0] for k in keys], [k[1] for k in keys])
                seen = time.perf_counter()
                for r in rows:
                    key = (r["cadre_id"], r["household_id"])
                    new = r["n"] - seen_visits.get(key, 0)
                    waiting = pending_visits.get(key, [])
                    for rec in waiting[:new]:  # the earliest answered are the ones counted
                        rec["visible"] = seen
                    seen_visits[key] = seen_visits.get(key, 0) + min(new, len(waiting))
                    if new >= len(waiting):
                        pending_visits.pop(key, None)
                    elif new > 0:
                        pending_visits[key] = waiting[new:]
            polls += 1
            if stop_polling.is_set() and time.perf_counter() > drain_deadline:
                break
            await asyncio.sleep(max(0.0, poll - (time.perf_counter() - started)))

    drain_deadline = float("inf")
    poll_task = asyncio.create_task(poller())
    tasks = []
    t0 = time.perf_counter() + 0.2
    for i in range(n):
        scheduled = t0 + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i, scheduled)))
    send_end = time.perf_counter()
    await asyncio.gather(*tasks)
    answered_end = time.perf_counter()
    drain_deadline = time.perf_counter() + float(args.get("drain", 30.0))
    stop_polling.set()
    await poll_task
    await db.close()
    for c in idle:
        c.close()

    out: dict[str, Any] = {"rate": rate, "duration": duration, "commands": n, "connections_opened": opened,
                           "mix": {k: kinds.count(k) for k in args["mix"]}, "polls": polls,
                           "send_lag_max_ms": max((r["sent"] - r["scheduled"]) * 1000
                                                  for r in records if "sent" in r) if records else None,
                           "offered_seconds": send_end - t0, "answered_seconds": answered_end - t0}
    ok = [r for r in records if 200 <= r.get("status", 0) < 300]
    out["ok"] = len(ok)
    out["errors"] = {str(k): v for k, v in _count(r.get("status", 0) for r in records if r not in ok).items()}
    out["error_samples"] = [f"{r['kind']}: {r.get('error') or r.get('status')}" for r in records if r not in ok][:5]
    # Completed per second over the offered window, or over the longer time the platform needed.
    out["completed_rate"] = len(ok) / max(duration, max((r["answered"] for r in ok), default=t0) - t0)
    for kind in (*args["mix"], "all"):
        mine = [r for r in ok if kind == "all" or r["kind"] == kind]
        # A change never seen within the drain time counts as infinitely late, not as absent.
        fresh = sorted([(r["visible"] - r["answered"]) * 1000 for r in mine if "visible" in r]
                       + [float("inf")] * sum(1 for r in mine if "visible" not in r))
        latency = sorted((r["answered"] - r["sent"]) * 1000 for r in mine)
        out[kind] = {"ok": len(mine), "never_visible": sum(1 for r in mine if "visible" not in r),
                     "freshness_ms": _percentiles(fresh), "command_ms": _percentiles(latency)}
    return out


def _count(values: Any) -> dict[Any, int]:
    out: dict[Any, int] = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


def _percentiles(sorted_values: list[float]) -> dict[str, float | None]:
    def pct(p: float) -> float | None:
        if not sorted_values:
            return None
        i = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
        return sorted_values[i]

    return {"p50": pct(50), "p95": pct(95), "p99": pct(99), "max": sorted_values[-1] if sorted_values else None,
            "n": len(sorted_values)}


def main() -> int:
    name = sys.argv[1]
    fn = TASKS[name]
    args = json.loads(sys.stdin.read() or "{}")
    result = asyncio.run(fn(args)) if asyncio.iscoroutinefunction(fn) else fn(args)
    result["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
