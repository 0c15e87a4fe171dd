"""The faults `shortlist bench soak --faults` injects on a schedule into its local stack, and
how their effects are counted.

The stack then runs on a Redis of its own (AOF, maxmemory with noeviction: see
shortlist.tools.faults.OwnRedis) and a tansu broker of its own, and serves a copy of the
bundle from a scratch root, so that the faults touch nothing else on the machine:

- `redis_kill9`: SIGKILL, a second down, restarted from its AOF (the worker finds the lost
  tail through the offsets kept with the state and consumes it again);
- `redis_maxmemory`: `maxmemory` set under what is used for `hold_s` (every write refused
  with OOM, reads served), then given back;
- `redis_sleep`: `DEBUG SLEEP` (the whole server blocked);
- `broker_restart`: the broker stopped and started on its port. tansu keeps its log in
  memory here, so the restarted broker is empty: events acknowledged but not yet consumed
  when it stops are lost with it. Those are counted apart (`lost_with_memory_broker`: an
  acknowledged event missing from Redis at the end that was acknowledged before a broker
  stop, after the stop before it, and not applied when the broker had stopped: read from
  Redis right then); with Apache Kafka (replicated, on disk) they stay in the log.
- `hot_swap`: a new bundle version published; done when the gateway answers with it;
- `tampered_bundle`: a version whose file does not match its manifest promoted; the
  gateway must go on answering with the version it had; LATEST is then put back.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.bundle.promotion import latest_version, promote
from shortlist.config import Settings
from shortlist.feedback.bus import ensure_topic
from shortlist.rpc.server import client_channel
from shortlist.tools.faults import Fault, OwnRedis, mark_ids
from shortlist.tools.stack import TansuBroker
from shortlist.v1 import gateway_pb2, gateway_pb2_grpc

FAULTS = (
    "redis_kill9",
    "hot_swap",
    "redis_maxmemory",
    "broker_restart",
    "redis_sleep",
    "tampered_bundle",
)


@dataclasses.dataclass
class FaultParts:
    """The parts the faults act on, owned by the soak (started before the stack)."""

    redis: OwnRedis
    broker: TansuBroker
    bundle_root: Path
    settings: Settings
    hold_s: float = 8.0  # how long Redis stays at its memory limit
    sleep_s: float = 3.0  # DEBUG SLEEP
    swaps: int = 0
    # Each broker stop: when (time.monotonic()) and the event ids applied at that moment.
    broker_stops: list[tuple[float, set[str]]] = dataclasses.field(default_factory=list)

    def served_version(self) -> str:
        with client_channel(self.settings.gateway_addr) as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            request = gateway_pb2.RecommendRequest(user_id="soak-probe", k=3)
            return stub.Recommend(request, timeout=5).model_version

    def redis_kill9(self) -> str:
        self.redis.kill9()
        time.sleep(1.0)
        return f"restarted from its AOF in {self.redis.start():.2f}s"

    def redis_maxmemory(self) -> str:
        limit = self.redis.squeeze()
        try:
            time.sleep(self.hold_s)
        finally:
            self.redis.set_maxmemory(limit)
        return f"writes refused (OOM) for {self.hold_s:g}s"

    def redis_sleep(self) -> str:
        started = time.monotonic()
        self.redis.debug_sleep(self.sleep_s)
        return f"blocked {time.monotonic() - started:.2f}s"

    def broker_restart(self) -> str:
        self.broker.stop()
        stopped = time.monotonic()
        applied = set(mark_ids(self.redis.client(), self.settings.redis_prefix))
        self.broker_stops.append((stopped, applied))
        self.broker.start()
        s = self.settings
        ensure_topic(s.kafka_bootstrap, s.feedback_topic, s.feedback_partitions)
        return "restarted (memory storage: empty log)"

    def hot_swap(self) -> str:
        self.swaps += 1
        current = latest_version(self.bundle_root)
        version = f"soak-swap-{self.swaps}"
        bundle = load_bundle(self.bundle_root)
        save_bundle(dataclasses.replace(bundle, version=version), self.bundle_root)
        del bundle
        self._retire(keep={current, version})
        started = time.monotonic()
        while self.served_version() != version:
            if time.monotonic() - started > 60:
                raise TimeoutError(f"{version} not served after 60s")
            time.sleep(0.2)
        return f"{version} served after {time.monotonic() - started:.1f}s"

    def tampered_bundle(self) -> str:
        current = latest_version(self.bundle_root)
        version = f"soak-tampered-{self.swaps}"
        bundle = load_bundle(self.bundle_root)
        path = save_bundle(
            dataclasses.replace(bundle, version=version), self.bundle_root, promote_it=False
        )
        del bundle
        with open(path / "item_vectors.npy", "ab") as f:
            f.write(b"\0")  # no longer the file the manifest lists
        promote(self.bundle_root, version, "soak: a tampered bundle")
        try:
            time.sleep(3 * self.settings.bundle_poll_ms / 1000 + 1)  # three polls at least
            served = self.served_version()
        finally:
            promote(self.bundle_root, current, "soak: back from the tampered bundle")
            shutil.rmtree(path, ignore_errors=True)
        if served != current:
            raise AssertionError(f"the gateway serves {served} after a tampered {version}")
        return f"refused; {current} kept serving"

    def _retire(self, keep: set[str]) -> None:
        """Old soak versions off the scratch root (a service holds at most two)."""
        for path in self.bundle_root.iterdir():
            if path.is_dir() and path.name.startswith("soak-") and path.name not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def faults(self, names: tuple[str, ...] = FAULTS) -> list[Fault]:
        return [Fault(name, getattr(self, name)) for name in names]


def prepare(settings: Settings, scratch: Path, maxmemory_mb: int) -> tuple[Settings, FaultParts]:
    """Start the soak's own Redis and broker on the settings' ports, and copy the bundle to
    a scratch root; the settings to start the stack with, and the parts."""
    redis_port = int(settings.redis_url.rsplit(":", 1)[1].split("/")[0])
    server = OwnRedis(scratch / "redis", maxmemory_mb=maxmemory_mb, port=redis_port)
    server.start()
    broker = TansuBroker(int(settings.kafka_bootstrap.rsplit(":", 1)[1]))
    broker.start()
    root = scratch / "artifacts"
    save_bundle(load_bundle(Path(settings.bundle)), root, reason="soak copy")
    settings = settings.replace(bundle=str(root))
    return settings, FaultParts(server, broker, root, settings)


def attribute(
    audit: dict[str, Any],
    sent: list[tuple[str, str, str, bool, float]],
    t0: float,
    stops: list[tuple[float, set[str]]],
) -> dict[str, Any]:
    """Split the acknowledged events Redis lacks into those the memory broker's log held
    when it stopped (acknowledged since the stop before, not applied at the stop) and any
    other (a real loss); with the oldest of the former's age at its stop, which is how far
    the consumer was behind."""
    done_at = {event_id: t0 + done for _, event_id, _, _, done in sent}
    lost_broker, lost_other, ages = [], [], [0.0]
    for event_id in audit["missing"]:
        at = done_at[event_id]
        before = 0.0
        for stopped, applied in stops:
            if before < at <= stopped and event_id not in applied:
                lost_broker.append(event_id)
                ages.append(stopped - at)
                break
            before = stopped
        else:
            lost_other.append(event_id)
    return {
        "lost_with_memory_broker": len(lost_broker),
        "lost_with_memory_broker_oldest_s": round(max(ages), 2),
        "lost": len(lost_other),
    }


def errors_by_fault(
    samples, records: list[dict[str, Any]], schedule_t0: float, grace_s: float = 5.0
) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """Failed calls by fault window (its start to `grace_s` after its end) and code, and
    those outside every window."""
    windows = [
        (
            r["fault"],
            schedule_t0 + r["start_s"] - samples.t0,
            schedule_t0 + r["end_s"] + grace_s - samples.t0,
        )
        for r in records
    ]
    inside: dict[str, dict[str, int]] = {}
    outside: dict[str, int] = {}
    for sent, latency, code in zip(samples.sent, samples.latency, samples.code):
        if code == "OK":
            continue
        for name, lo, hi in windows:
            if lo <= sent + latency and sent <= hi:
                by_code = inside.setdefault(name, {})
                by_code[code] = by_code.get(code, 0) + 1
                break
        else:
            outside[code] = outside.get(code, 0) + 1
    return inside, outside
