"""The `tpa` command as a user runs it: `tpa up` on embedded infrastructure, projection rebuild."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg


ROOT = Path(__file__).resolve().parent.parent


def run_tpa(*args: str, env: dict[str, str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TPA_", "KAFKA_", "OTEL_"))}
    env.update(extra)
    return env


def test_tpa_up_starts_everything_and_the_walking_skeleton_flows_through_the_gateway(tmp_path):
    env = clean_env(TPA_STATE_DIR=str(tmp_path / "state"))
    first = run_tpa("up", "--exit-after-start", "--demo-households", "30", env=env)
    assert first.returncode == 0, first.stdout + first.stderr[-4000:]
    assert "TPA is up. Gateway: http://127.0.0.1:" in first.stdout
    assert "Loading a synthetic county (30 households)" in first.stdout
    first_count = _counted(first.stdout)
    assert first_count == 1
    # The demo household's identification case went through the workflow to its first notice.
    assert re.search(r"Review: identification case [0-9a-f-]{36} is at step first_notice", first.stdout), \
        first.stdout
    assert "TPA stopped." in first.stdout
    # The database survives a restart; the in-memory broker does not, and the relay republishes:
    # monitoring's read model must neither lose nor double-count the first household.
    second = run_tpa("up", "--exit-after-start", "--demo-households", "30", env=env)
    assert second.returncode == 0, second.stdout + second.stderr[-4000:]
    assert "Loading a synthetic county" not in second.stdout  # loaded once
    assert _counted(second.stdout) == first_count + 1, second.stdout
    assert not (tmp_path / "state" / "runtime.env").exists()


def _counted(stdout: str) -> int:
    match = re.search(r"monitoring now counts (\d+) household\(s\)", stdout)
    assert match, stdout
    return int(match.group(1))


def test_projections_list_and_rebuild(infra, database):
    env = clean_env(TPA_MONITORING_DATABASE_URL=database, TPA_STATE_DIR="/nonexistent")
    listed = run_tpa("projections", "list", env=env, timeout=60)
    assert listed.returncode == 0 and "village-households\tmonitoring" in listed.stdout
    unknown = run_tpa("projections", "rebuild", "nope", env=env, timeout=60)
    assert unknown.returncode == 2 and "unknown projection 'nope'" in unknown.stderr
    rebuilt = run_tpa("projections", "rebuild", "village-households", env=env, timeout=60)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "epoch 2" in rebuilt.stdout


async def test_rebuild_clears_the_read_model_and_bumps_the_epoch(database):
    import asyncio

    conn = await asyncpg.connect(database)
    try:
        env = clean_env(TPA_MONITORING_DATABASE_URL=database, TPA_STATE_DIR="/nonexistent")
        proc = await asyncio.to_thread(run_tpa, "projections", "rebuild", "village-households", env=env)
        assert proc.returncode == 0, proc.stderr
        await conn.execute("INSERT INTO village_households VALUES ('620102001001', 5, 20)")
        proc = await asyncio.to_thread(run_tpa, "projections", "rebuild", "village-households", env=env)
        assert proc.returncode == 0 and "epoch 3" in proc.stdout
        assert await conn.fetchval("SELECT count(*) FROM village_households") == 0
    finally:
        await conn.close()


def test_serve_refuses_an_invalid_kafka_setting_with_a_clear_message():
    bad = run_tpa("serve", "registry", env=clean_env(
        KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", KAFKA_COMPRESSION_TYPE="brotli", KAFKA_PRODUCER_BATCH_BYTES="10",
        TPA_REGISTRY_DATABASE_URL="postgresql://nobody@127.0.0.1:9/none"), timeout=60)
    assert bad.returncode == 2, bad.stderr[-2000:]
    assert "KAFKA_COMPRESSION_TYPE" in bad.stderr and "'zstd'" in bad.stderr
    assert "KAFKA_PRODUCER_BATCH_BYTES" in bad.stderr
    assert "Traceback" not in bad.stderr
