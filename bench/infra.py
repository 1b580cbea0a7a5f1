"""The infrastructure a benchmark run owns: a temporary state folder, an embedded PostgreSQL
cluster, an embedded Kafka-protocol broker (tansu), TPA service processes and worker
processes. Everything started here is stopped by ``Infra.close()``, which the command line
calls in a ``finally`` (also on Ctrl-C and SIGTERM)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eventkit import tokens
from eventkit.embedded import EmbeddedBroker, EmbeddedPostgres, die_with_parent, free_port

REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- /proc helpers (Linux) ----------------------------------------------------------------------

def peak_rss_kib(pid: int) -> int | None:
    """VmHWM: the peak resident set size of a live process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their users), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class PostgresMemorySampler(threading.Thread):
    """Samples the summed PSS of the postmaster and all its children once a second and keeps
    the peak (PSS, so that shared buffers are counted once across backends)."""

    def __init__(self, postmaster_pid: int, interval: float = 1.0) -> None:
        super().__init__(daemon=True, name="pg-memory-sampler")
        self.pid = postmaster_pid
        self.interval = interval
        self.peak_kib = 0
        self.peak_processes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        import psutil

        while not self._halt.is_set():
            try:
                parent = psutil.Process(self.pid)
                pids = [self.pid] + [c.pid for c in parent.children(recursive=True)]
            except psutil.Error:
                pids = []
            total = sum(v for v in (pss_kib(p) for p in pids) if v)
            if total > self.peak_kib:
                self.peak_kib, self.peak_processes = total, len(pids)
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()


# -- HTTP helpers ----------------------------------------------------------------------------------

def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


_METRIC = re.compile(r'^(\w+)\{([^}]*)\}\s+([0-9.eE+-]+|NaN)$')


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The Prometheus text of ``url``/metrics as {(name, labels): value}."""
    _, body = http_get(url + "/metrics", timeout=5.0)
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for line in body.decode().splitlines():
        m = _METRIC.match(line)
        if m:
            labels = tuple(sorted(tuple(kv.split("=", 1)) for kv in re.findall(r'\w+="[^"]*"', m.group(2))))
            labels = tuple((k, v.strip('"')) for k, v in labels)
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def projection_counts(url: str) -> dict[str, dict[str, float]]:
    """Per projection: applied, duplicates, dead-lettered events, held streams and total lag."""
    counts: dict[str, dict[str, float]] = {}
    names = {"tpa_projection_applied_events_total": "applied",
             "tpa_projection_duplicate_events_total": "duplicates",
             "tpa_projection_dead_lettered_events_total": "dead",
             "tpa_projection_held_streams": "held",
             "tpa_projection_consumer_lag": "lag"}
    for (name, labels), value in scrape(url).items():
        if name in names:
            projection = dict(labels).get("projection", "")
            slot = counts.setdefault(projection, {"applied": 0, "duplicates": 0, "dead": 0, "held": 0, "lag": 0})
            slot[names[name]] += value
    return counts


# -- service processes -----------------------------------------------------------------------------

@dataclass
class Service:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path
    started_at: float
    peak_rss_kib: int | None = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def refresh_peak(self) -> int | None:
        value = peak_rss_kib(self.proc.pid)
        if value:
            self.peak_rss_kib = max(self.peak_rss_kib or 0, value)
        return self.peak_rss_kib


@dataclass
class Infra:
    state_dir: Path
    keep_state: bool = False
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedBroker | None = None
    services: dict[str, Service] = field(default_factory=dict)
    workers: set[subprocess.Popen] = field(default_factory=set)
    pg_sampler: PostgresMemorySampler | None = None
    hmac_key: str = ""
    internal_keys: str = ""
    gateway_keys: str = ""
    service_peaks: dict[str, int] = field(default_factory=dict)  # name -> highest VmHWM seen (KiB)
    _owns_state_dir: bool = False

    @classmethod
    def create(cls, state_dir: str | None, keep_state: bool) -> "Infra":
        if state_dir:
            path = Path(state_dir).absolute()
            path.mkdir(parents=True, exist_ok=True)
            owns = False
        else:
            path = Path(tempfile.mkdtemp(prefix="tpa-bench-"))
            owns = True
        import secrets

        infra = cls(path, keep_state, _owns_state_dir=owns)
        infra.hmac_key = secrets.token_urlsafe(48)
        infra.internal_keys = tokens.keyring_text("bench-internal")
        infra.gateway_keys = tokens.keyring_text("bench-api")
        return infra

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, *, pg_settings: dict[str, Any] | None = None, fast: bool = False) -> None:
        log(f"state in {self.state_dir}")
        self.pg = EmbeddedPostgres(self.state_dir / "pgdata", fast=fast, settings=pg_settings or {})
        self.pg.start()
        log(f"PostgreSQL on port {self.pg.port}")
        # Clients talk to tansu directly: the compat proxy (a Python thread in the process that
        # starts the broker) exists for old librdkafka clients and would compete for our CPU.
        self.broker = EmbeddedBroker(compat_proxy=False, log_path=self.state_dir / "broker.log")
        self.broker.start()
        log(f"broker (tansu, in memory) on {self.broker.bootstrap_servers}")
        pid = self._postmaster_pid()
        if pid:
            self.pg_sampler = PostgresMemorySampler(pid)
            self.pg_sampler.start()

    def _postmaster_pid(self) -> int | None:
        try:
            return int((self.pg.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def close(self) -> None:
        """Stop everything this run started. Safe to call twice and after a partial start."""
        for name in list(self.services):
            try:
                self.stop_service(name)
            except Exception as exc:  # noqa: BLE001 - keep cleaning up
                log(f"stopping {name}: {exc!r}")
        for proc in list(self.workers):
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        self.workers.clear()
        if self.pg_sampler is not None:
            self.pg_sampler.stop()
        if self.broker is not None:
            try:
                self.broker.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping the broker: {exc!r}")
        if self.pg is not None:
            try:
                self.pg.stop()
            except Exception as exc:  # noqa: BLE001
                log(f"stopping PostgreSQL: {exc!r}")
        if self._owns_state_dir and not self.keep_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)
        elif self.keep_state:
            log(f"state kept in {self.state_dir}")

    def broker_peak_rss_kib(self) -> int | None:
        return peak_rss_kib(self.broker.pid) if self.broker and self.broker.pid else None

    def restart_broker(self) -> None:
        """A fresh, empty broker on the same port (in-memory storage)."""
        assert self.broker is not None
        self.broker.restart()

    # -- databases -------------------------------------------------------------------------------

    def dsn(self, database: str) -> str:
        assert self.pg is not None
        return self.pg.dsn(database)

    def fresh_database(self, name: str) -> str:
        """Drop ``name`` if it exists and create it empty; its DSN."""
        assert self.pg is not None
        self.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.pg.create_database(name)
        return self.pg.dsn(name)

    def drop_database(self, name: str) -> None:
        assert self.pg is not None
        self.pg.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    # -- services --------------------------------------------------------------------------------

    def service_env(self, dsns: dict[str, str], group_prefix: str, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TPA_", "KAFKA_", "OTEL_"))}
        env.update({
            "TPA_STATE_DIR": str(self.state_dir / "tpa"),  # no .tpa/runtime.env of a `tpa up` in the cwd
            "KAFKA_BOOTSTRAP_SERVERS": self.broker.bootstrap_servers if self.broker else "",
            "KAFKA_ENABLE_IDEMPOTENCE": "false",  # tansu rejects the idempotent producer
            "KAFKA_GROUP_PREFIX": group_prefix,
            "TPA_REGISTRY_ID_HMAC_KEY": self.hmac_key,
            "TPA_FUNDS_ID_HMAC_KEY": self.hmac_key[::-1],  # a key of its own, as `tpa up` gives funds
            "TPA_INTERNAL_TOKEN_KEYS": self.internal_keys,
            "TPA_GATEWAY_TOKEN_KEYS": self.gateway_keys,
            "TPA_LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        })
        for service, dsn in dsns.items():
            env[f"TPA_{service.upper()}_DATABASE_URL"] = dsn
        for name, svc in self.services.items():
            env[f"TPA_{name.upper()}_URL"] = svc.url
        env.update(extra)
        return env

    def start_service(self, name: str, env: dict[str, str], timeout: float = 90.0, wait: bool = True) -> Service:
        """``tpa serve NAME`` as a child process; returns once /readyz answers 200 (at once
        with ``wait=False``: then ``wait_ready`` later)."""
        if name in self.services:
            raise RuntimeError(f"{name} is running already")
        port = free_port()
        env = dict(env)
        env[f"TPA_{name.upper()}_PORT"] = str(port)
        log_path = self.state_dir / f"{name}.log"
        out = open(log_path, "ab")  # noqa: SIM115 - closed by the child's exit
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", name], env=env, cwd=REPO,
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent())
        out.close()
        svc = Service(name, proc, f"http://127.0.0.1:{port}", log_path, started)
        self.services[name] = svc
        if wait:
            self.wait_ready(svc, timeout)
        return svc

    def wait_ready(self, svc: Service, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive(svc)
            try:
                status, _ = http_get(svc.url + "/readyz", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{svc.name} not ready after {timeout:.0f}s (log: {svc.log_path})")
            time.sleep(0.1)

    def check_alive(self, svc: Service) -> None:
        if svc.proc.poll() is not None:
            tail = svc.log_path.read_text(errors="replace")[-3000:]
            self.services.pop(svc.name, None)
            raise RuntimeError(f"{svc.name} exited with code {svc.proc.returncode}:\n{tail}")

    def stop_service(self, name: str) -> Service | None:
        svc = self.services.pop(name, None)
        if svc is None:
            return None
        peak = svc.refresh_peak()
        if peak:
            self.service_peaks[name] = max(self.service_peaks.get(name, 0), peak)
        if svc.proc.poll() is None:
            svc.proc.send_signal(signal.SIGTERM)
            try:
                svc.proc.wait(20)
            except subprocess.TimeoutExpired:
                svc.proc.kill()
                svc.proc.wait(10)
        return svc

    def note_peaks(self) -> None:
        for name, svc in self.services.items():
            peak = svc.refresh_peak()
            if peak:
                self.service_peaks[name] = max(self.service_peaks.get(name, 0), peak)

    # -- workers ---------------------------------------------------------------------------------

    def run_worker(self, task: str, args: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Run ``python -m bench.worker TASK`` with ``args`` as JSON on stdin; its JSON result.
        Each measured piece runs in a fresh process: clean memory figures, no interference."""
        proc = subprocess.Popen([sys.executable, "-m", "bench.worker", task], cwd=REPO,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent(), env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.workers.add(proc)
        try:
            out, err = proc.communicate(json.dumps(args).encode(), timeout=timeout)
        finally:
            self.workers.discard(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {task} failed ({proc.returncode}):\n{err.decode(errors='replace')[-4000:]}")
        lines = [line for line in out.decode().splitlines() if line.startswith("{")]
        if not lines:
            raise RuntimeError(f"worker {task} printed no result:\n{err.decode(errors='replace')[-4000:]}")
        return json.loads(lines[-1])

    def run_cli(self, argv: list[str], env: dict[str, str], stdin: str | None = None,
                timeout: float = 600.0) -> tuple[float, subprocess.CompletedProcess]:
        """``tpa ARGV`` as a child process; (seconds, completed process)."""
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-m", "services.cli", *argv], cwd=REPO, env=env, input=stdin,
                                capture_output=True, text=True, timeout=timeout, preexec_fn=die_with_parent())
        return time.perf_counter() - started, result
