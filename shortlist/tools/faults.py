"""Faults injected into real parts, for the fault tests and `shortlist bench soak --faults`.

- `OwnRedis`: a redis-server of our own on a free port, with an append-only file (fsync
  every second) and `maxmemory` with `noeviction` (as deploy/k8s runs it), that can be
  killed with SIGKILL and restarted from its AOF, put at its memory limit (writes refused
  with OOM, reads served) or blocked with `DEBUG SLEEP`.
- `FaultSchedule`: a background thread that injects named faults in turn, one every
  `every_s` seconds, and records when each began and ended (seconds on the monotonic
  clock), so that a run can set its figures against them.
- `acknowledged_audit`: which acknowledged events Redis holds as applied, and whether any
  was applied twice (the users' like counters against the like events marked applied).
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from shortlist.tools.stack import free_port, port_open, wait_for

log = logging.getLogger(__name__)


class OwnRedis:
    """A redis-server child on `port` (a free one by default) with its files in `root`."""

    def __init__(self, root: Path, maxmemory_mb: int = 256, port: int | None = None) -> None:
        self.dir = Path(root)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.maxmemory = maxmemory_mb * 1024 * 1024
        self.proc: subprocess.Popen | None = None
        self.kills = 0

    def argv(self) -> list[str]:
        server = shutil.which("redis-server")
        if not server:
            raise RuntimeError("redis-server is not installed")
        return [
            server,
            *("--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir)),
            *("--save", "", "--appendonly", "yes", "--appendfsync", "everysec"),
            *("--maxmemory", str(self.maxmemory), "--maxmemory-policy", "noeviction"),
            # DEBUG SLEEP is how a slow Redis is simulated; allowed from loopback only.
            *("--enable-debug-command", "local"),
        ]

    def start(self) -> float:
        """Start (loading the AOF when there is one); the seconds until it answers PING."""
        started = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: port_open("127.0.0.1", self.port), 15, "redis-server")
        wait_for(self._loaded, 30, "redis loaded its AOF")
        return time.monotonic() - started

    def _loaded(self) -> bool:
        try:
            return bool(self.client(1.0).ping())
        except redis.RedisError:  # LOADING while it replays the AOF
            return False

    def client(self, timeout_s: float = 5.0) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=timeout_s)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def kill9(self) -> None:
        """SIGKILL: no shutdown, no final fsync (up to a second of writes may be lost)."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.kills += 1

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def used_memory(self) -> int:
        return int(self.client().info("memory")["used_memory"])

    def set_maxmemory(self, limit: int) -> None:
        self.client().config_set("maxmemory", limit)

    def squeeze(self) -> int:
        """Lower `maxmemory` under what is used (noeviction: every write is refused with OOM
        from now on, reads still served); returns the limit to give back."""
        self.set_maxmemory(max(1024 * 1024, self.used_memory() // 2))
        return self.maxmemory

    def debug_sleep(self, seconds: float) -> None:
        """Block the server for `seconds` (every client waits); returns when it answers."""
        self.client(seconds + 10).execute_command("DEBUG", "SLEEP", f"{seconds:g}")


@dataclass
class Fault:
    """A named fault: `inject()` applies it and undoes it (blocking for its duration) and
    returns a short detail for the report."""

    name: str
    inject: Callable[[], str]


@dataclass
class FaultSchedule:
    """Injects `faults` in turn, the first after `first_s`, then one every `every_s`
    (measured from the start of the previous one), in a background thread."""

    faults: list[Fault]
    every_s: float
    first_s: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="faults", daemon=True)
        self.t0 = time.monotonic()

    def start(self, t0: float | None = None) -> FaultSchedule:
        self.t0 = time.monotonic() if t0 is None else t0
        self._thread.start()
        return self

    def _loop(self) -> None:
        next_at = time.monotonic() + self.first_s
        for fault in itertools.cycle(self.faults):
            if self._stop.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at = time.monotonic() + self.every_s
            self.run_one(fault)

    def run_one(self, fault: Fault) -> dict[str, Any]:
        started = time.monotonic()
        record: dict[str, Any] = {"fault": fault.name, "start_s": round(started - self.t0, 2)}
        try:
            record["detail"] = fault.inject()
            record["ok"] = True
        except Exception as exc:  # a fault that could not be injected is reported, not fatal
            log.exception("fault %s failed", fault.name)
            record["detail"] = f"{type(exc).__name__}: {exc}"
            record["ok"] = False
        record["end_s"] = round(time.monotonic() - self.t0, 2)
        self.records.append(record)
        return record

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(120)


def mark_ids(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Dedup marks under `prefix`: the client's event id (the part after the caller's scope)
    -> the user whose mark it is."""
    out = {}
    for key in client.scan_iter(f"{prefix}{{u:*}}:ev:*", count=5000):
        text = key.decode()
        head, _, scoped = text.partition(":ev:")
        user = head[len(prefix) + 3 : -1]  # inside "{u:...}"
        out[scoped.rpartition(":")[2]] = user
    return out


def acknowledged_audit(
    client: redis.Redis,
    prefix: str,
    sent: Iterable[tuple[str, str, str, bool]],
) -> dict[str, Any]:
    """`sent`: (user, client event id, kind, acknowledged) of every event sent. Returns
    how many acknowledged events Redis marks applied, the ids of those it lacks, and the
    like-counter total against the likes marked applied (acknowledged or not: a call that
    timed out at the client may still have been published): a counter above the marked likes
    means an event was applied twice."""
    marks = mark_ids(client, prefix)
    acknowledged = applied = 0
    missing: list[str] = []
    like_users: dict[str, int] = {}
    for user, event_id, kind, acked in sent:
        present = event_id in marks
        acknowledged += acked
        applied += acked and present
        if acked and not present:
            missing.append(event_id)
        if present and kind == "like":
            like_users[user] = like_users.get(user, 0) + 1
    users = sorted(set(marks.values()))
    keys = [f"{prefix}{{u:{u}}}:likes" for u in users]
    counters = [int(v or 0) for v in client.mget(keys)] if keys else []
    counted = sum(counters)
    marked_likes = sum(like_users.values())
    return {
        "acknowledged": acknowledged,
        "applied": applied,
        "missing": missing,
        "likes_marked": marked_likes,
        "likes_counted": counted,
        "applied_twice": max(0, counted - marked_likes),
    }
