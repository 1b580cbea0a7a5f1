"""Schemathesis, a client nobody here wrote, against the gateway's own OpenAPI document.

The whole platform runs as a user starts it (`tpa up` on embedded infrastructure); a county
user signs in like an app; Schemathesis generates requests for every operation from the
document (examples, boundary values, random data, stateful sequences) and fails on any server
error. The seed is fixed so that CI is repeatable; run `schemathesis` by hand (docs/operations.md)
with other seeds and more examples.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"


def _env(state: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPA_", "KAFKA_", "OTEL_"))}
    # the fuzzer sends thousands of requests a minute; rate limits have their own tests
    env.update(TPA_STATE_DIR=str(state), TPA_GATEWAY_RATE_LIMIT_PER_MINUTE="0")
    return env


def test_the_gateway_passes_a_schemathesis_run_without_server_errors(tmp_path: Path) -> None:
    env = _env(tmp_path / "state")
    # The platform's output goes to a file: a pipe nobody reads after start-up would fill up and
    # block the services' logging (and with it the services).
    log = tmp_path / "up.log"
    with open(log, "w") as out:
        up = subprocess.Popen([sys.executable, "-m", "services.cli", "up", "--demo-households", "0"], cwd=ROOT,
                              env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
    try:
        gateway = None
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace")
            assert up.poll() is None, text[-4000:]
            found = re.search(r"TPA is up\. Gateway: (http://\S+)", text)
            gateway = found.group(1) if found else gateway
            if "Press Ctrl-C" in text:
                break
            time.sleep(0.5)
        lines = [log.read_text(errors="replace")]
        assert gateway, "".join(lines[-40:])
        created = subprocess.run(
            [sys.executable, "-m", "services.cli", "users", "create", "fuzz-county", "--role", "county_office",
             "--role", "information_officer", "--role", "operator", "--level", "county", "--jurisdiction", "620102",
             "--generate"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stdout + created.stderr
        password = re.search(r"password: (\S+)", created.stdout).group(1)
        form = urllib.parse.urlencode({"grant_type": "password", "username": "fuzz-county",
                                       "password": password}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{gateway}/api/v1/auth/token", data=form)) as resp:
            token = json.loads(resp.read())["access_token"]
        run = subprocess.run(
            [str(SCHEMATHESIS), "run", f"{gateway}/openapi.json", "-H", f"Authorization: Bearer {token}",
             "--checks", "not_a_server_error", "--max-examples", "5", "--seed", "20261122",
             "--exclude-path-regex", "/alerts/stream|/auth/logout|/me/password",  # endless stream; own session
             "--request-timeout", "60", "--no-color"],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
        report = run.stdout + run.stderr
        failures = report[report.find("FAILURES"):report.find("SUMMARY")] if "FAILURES" in report else report
        assert run.returncode == 0, failures[:12000] + report[-1500:]
        tested = re.search(r"Tested:\s+(\d+)", report)
        assert tested and int(tested.group(1)) > 100, report[-3000:]
        assert re.search(r"(\d+) generated, \1 passed", report), report[-3000:]
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
