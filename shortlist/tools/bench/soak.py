"""Soak: the local stack (`shortlist up` processes over Redis and tansu) under a steady mixed
load (Recommend + SendFeedback through `shortlist loadtest`) for a long run, with the
resident memory of every process sampled over time.

Prints errors by code, p50/p99 per minute, the RSS of every process at start (after the
warm-up) and end with its slope, and checks the bounds: no errors, RSS growth after the
warm-up below `max_rss_growth` (10%) for every service process. The stack runs on ports of
its own (free ones), so that it does not collide with another stack on this machine.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shortlist.config import Settings
from shortlist.tools import loadtest as lt
from shortlist.tools.bench import soak_faults
from shortlist.tools.faults import FaultSchedule, acknowledged_audit
from shortlist.tools.stack import free_port, free_ports

MIB = 1024 * 1024


@dataclass
class SoakConfig:
    seconds: float = 600.0
    rate: float = 100.0
    feedback_share: float = 0.2
    warmup_s: float = 60.0  # memory bound measured from here (caches, allocator arenas fill)
    sample_s: float = 5.0
    max_rss_growth: float = 0.10
    k: int = 20
    timeout_s: float = 2.0
    bundle: str = "artifacts"
    # Faults on a schedule (shortlist.tools.bench.soak_faults): one every `fault_every_s`,
    # the first after the warm-up; the stack then runs on a Redis and broker of its own.
    faults: tuple[str, ...] = ()
    fault_every_s: float = 60.0
    redis_maxmemory_mb: int = 256


@dataclass
class MemorySampler:
    """RSS of named processes every `interval_s` seconds (psutil), in a background thread."""

    pids: dict[str, int]
    interval_s: float = 5.0
    t: list[float] = field(default_factory=list)
    rss: dict[str, list[float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import psutil

        self._procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}
        self.rss = {name: [] for name in self.pids}
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def sample(self) -> None:
        self.t.append(time.monotonic() - self._t0)
        for name, proc in self._procs.items():
            try:
                self.rss[name].append(proc.memory_info().rss / MIB)
            except Exception:  # a process gone: recorded as NaN, reported as an error
                self.rss[name].append(math.nan)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def start(self) -> MemorySampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()


def memory_report(sampler: MemorySampler, warmup_s: float, bound: float) -> list[dict]:
    t = np.asarray(sampler.t)
    rows = []
    for name, values in sampler.rss.items():
        rss = np.asarray(values)
        after = t >= min(warmup_s, t[-1] if t.size else 0)
        t_w, r_w = t[after], rss[after]
        start, end = float(r_w[0]), float(r_w[-1])
        peak = float(np.nanmax(r_w))
        slope = float(np.polyfit(t_w / 60.0, r_w, 1)[0]) if len(t_w) >= 3 else math.nan
        growth = (end - start) / start if start > 0 else math.nan
        minute = (t // 60).astype(int)
        # the last sample of each minute: whether RSS climbs in steps (at faults, swaps) or
        # evenly with the load tells an allocator's high-water mark from a leak
        by_minute = [round(float(rss[minute == m][-1]), 1) for m in np.unique(minute)]
        rows.append(
            {
                "process": name,
                "rss_first_mib": round(float(rss[0]), 1),
                "rss_start_mib": round(start, 1),
                "rss_end_mib": round(end, 1),
                "rss_peak_mib": round(peak, 1),
                "slope_mib_per_min": round(slope, 3),
                "growth": round(growth, 4),
                "within_bound": bool(np.isfinite(rss).all() and growth < bound),
                "rss_by_minute_mib": by_minute,
            }
        )
    return rows


def per_minute(result: lt.LoadResult) -> list[dict]:
    s = result.samples
    scheduled = np.asarray(s.scheduled) - result.config.warmup_s
    latency = np.asarray(s.latency) * 1000.0
    kind = np.asarray(s.kind)
    failed = np.asarray(s.code, dtype=object) != "OK"
    minutes = int(math.ceil(result.config.duration_s / 60.0))
    rows = []
    for m in range(minutes):
        mask = (scheduled >= m * 60) & (scheduled < (m + 1) * 60)
        rec = mask & (kind == lt.RECOMMEND)
        fb = mask & (kind == lt.FEEDBACK)

        def pct(sel: np.ndarray, q: float) -> float | None:
            return round(float(np.percentile(latency[sel], q)), 2) if sel.any() else None

        rows.append(
            {
                "minute": m + 1,
                "calls": int(mask.sum()),
                "errors": int((failed & mask).sum()),
                "recommend_p50_ms": pct(rec, 50),
                "recommend_p99_ms": pct(rec, 99),
                "feedback_p50_ms": pct(fb, 50),
                "feedback_p99_ms": pct(fb, 99),
            }
        )
    return rows


def soak_settings(base: Settings) -> Settings:
    """Free ports for the four services, their metrics and the broker; an own key prefix."""
    ports = {f"{n}_addr": f"127.0.0.1:{free_port()}" for n in (*lt_services(), "gateway_http")}
    metrics = {f"{n}_metrics_port": free_port() for n in lt_services()}
    metrics["gateway_metrics_port"] = free_ports(base.gateway_workers)
    return base.replace(
        **ports,
        **metrics,
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        redis_prefix=f"soak:{int(time.time())}:",
        feedback_topic="shortlist.soak",
    )


def lt_services() -> tuple[str, ...]:
    from shortlist.tools.stack import SERVICES

    return SERVICES


def run(config: SoakConfig, console) -> dict[str, Any]:
    import psutil

    from shortlist.tools import stack

    settings = soak_settings(Settings.from_env(bundle=config.bundle))
    ensure_bundle(Path(settings.bundle), console)
    faults = f"; faults every {config.fault_every_s:g}s: {', '.join(config.faults)}"
    console.print(
        f"soak: {config.seconds:g}s at {config.rate:g}/s (feedback share "
        f"{config.feedback_share:g}) against a local stack on {settings.gateway_addr}"
        + (faults if config.faults else "")
    )
    scratch, parts, schedule = None, None, None
    if config.faults:
        scratch = Path(tempfile.mkdtemp(prefix="shortlist-soak-"))
        settings = settings.replace(redis_url=f"redis://127.0.0.1:{free_port()}/0")
        settings, parts = soak_faults.prepare(settings, scratch, config.redis_maxmemory_mb)
    try:
        pids = stack.up(settings)
    except BaseException:
        _release(parts, scratch)
        raise
    try:
        # every service process (gateway workers "gateway-1", ... included); the broker and
        # Redis too unless the faults restart them (a new process each time)
        procs = {n: p for n, p in pids.items() if n != "redis"}
        procs["loadgen"] = psutil.Process().pid
        sampler = MemorySampler(procs, config.sample_s).start()
        if parts is not None:
            schedule = FaultSchedule(
                parts.faults(config.faults), config.fault_every_s, min(config.warmup_s, 30.0)
            ).start()
        result = lt.run(
            lt.LoadConfig(
                target=settings.gateway_addr,
                rate=config.rate,
                duration_s=config.seconds,
                warmup_s=min(config.warmup_s, 30.0),
                feedback_share=config.feedback_share,
                k=config.k,
                timeout_s=config.timeout_s,
                seed=1,
                connections=16,  # several, so that gateway workers on one port share them
            ),
            on_progress=None,
        )
        if schedule is not None:
            schedule.stop()  # lets the fault in progress finish (and undo itself)
        sampler.stop()
        acknowledged = int(sum(1 for f in result.samples.feedback if f[3]))
        if parts is None:
            applied = feedback_applied(settings, acknowledged)
            fault_report: dict[str, Any] = {}
        else:
            fault_report = fault_figures(settings, parts, schedule, result.samples)
            applied = fault_report.pop("applied")
    finally:
        stack.down()
        _release(parts, scratch)
    minutes = per_minute(result)
    memory = memory_report(sampler, config.warmup_s, config.max_rss_growth)
    summary = result.summary
    errors = {k: v for k, v in _errors(result).items() if k != "OK"}
    services_ok = all(r["within_bound"] for r in memory if r["process"] in stack.SERVICES)
    p99s = [r["recommend_p99_ms"] for r in minutes if r["recommend_p99_ms"] is not None]
    report = {
        "seconds": config.seconds,
        "rate": config.rate,
        "feedback_share": config.feedback_share,
        "calls": int(len(result.samples.code)),
        "errors": errors,
        "achieved_rps": summary["achieved_rps"],
        "recommend_p50_ms": summary["p50_ms"],
        "recommend_p99_ms": summary["p99_ms"],
        "feedback_p99_ms": summary["feedback"]["p99_ms"],
        "p99_per_minute_min_max_ms": [min(p99s), max(p99s)] if p99s else None,
        "recommend_p99_ms_by_minute": [r["recommend_p99_ms"] for r in minutes],
        "feedback_acknowledged": acknowledged,
        "feedback_applied": applied,
        "rss_bound": f"growth < {config.max_rss_growth:.0%} after {config.warmup_s:g}s warm-up",
        "memory": memory,
        "minutes": minutes,
        "passed": not errors and services_ok and applied == acknowledged,
    }
    if config.faults:
        # Errors inside a fault's window are what the fault costs (reported by fault and
        # code); outside every window there must be none. Acknowledged events lost with
        # the memory broker are counted apart; any other loss, or a double apply, fails.
        report.update(fault_report)
        report["passed"] = (
            not fault_report["errors_outside_faults"]
            and services_ok
            and fault_report["lost"] == 0
            and fault_report["applied_twice"] == 0
            and all(r["ok"] for r in fault_report["faults"])
            and applied + fault_report["lost_with_memory_broker"] == acknowledged
        )
    _print(report, console)
    return report


def fault_figures(settings: Settings, parts, schedule, samples, wait_s: float = 120.0) -> dict:
    """Once the feedback service has caught up (or `wait_s` passed): acknowledged events
    applied, lost (with the memory broker, or otherwise), applied twice; the faults injected
    and the errors inside and outside their windows."""
    client = parts.redis.client()
    sent = [f[:4] for f in samples.feedback]
    deadline = time.monotonic() + wait_s
    while True:
        audit = acknowledged_audit(client, settings.redis_prefix, sent)
        lost = soak_faults.attribute(audit, samples.feedback, samples.t0, parts.broker_stops)
        if lost["lost"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(2.0)
    time.sleep(2.0)  # a late replay of an uncommitted batch would show here
    audit = acknowledged_audit(client, settings.redis_prefix, sent)
    lost = soak_faults.attribute(audit, samples.feedback, samples.t0, parts.broker_stops)
    inside, outside = soak_faults.errors_by_fault(samples, schedule.records, schedule.t0)
    return {
        "applied": audit["applied"],
        **lost,
        "applied_twice": audit["applied_twice"],
        # (event id, seconds after the load began when it was acknowledged), to set against
        # the faults' times; the first 50
        "missing_acknowledged": [
            [f[1], round(f[4], 2)] for f in samples.feedback if f[1] in set(audit["missing"])
        ][:50],
        "likes_marked": audit["likes_marked"],
        "likes_counted": audit["likes_counted"],
        "redis_kills": parts.redis.kills,
        "faults": schedule.records,
        "errors_by_fault": inside,
        "errors_outside_faults": outside,
    }


def _release(parts, scratch: Path | None) -> None:
    if parts is not None:
        parts.broker.stop()
        parts.redis.stop()
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)


def ensure_bundle(root: Path, console) -> None:
    """Train the built-in bundle (as `shortlist up` does) when there is none."""
    if (root / "LATEST").exists() or (root / "manifest.json").exists():
        return
    from shortlist.bundle.files import save_bundle
    from shortlist.data.synthetic import generate
    from shortlist.training.pipeline import TrainConfig, train_bundle

    with console.status(f"training a bundle into {root}"):
        data = generate(n_users=1000, n_items=600, seed=7)
        save_bundle(train_bundle(data, TrainConfig(dim=32, epochs=30)), root)


def feedback_applied(settings: Settings, acknowledged: int, wait_s: float = 60.0) -> int:
    """Events the feedback service applied, once it caught up with what was acknowledged."""
    from shortlist.rpc.server import client_channel
    from shortlist.v1 import feedback_pb2, feedback_pb2_grpc

    deadline = time.monotonic() + wait_s
    with client_channel(settings.feedback_addr) as channel:
        stub = feedback_pb2_grpc.FeedbackAdminStub(channel)
        while True:
            status = stub.Status(feedback_pb2.FeedbackStatusRequest(), timeout=5)
            if status.events_applied >= acknowledged or time.monotonic() > deadline:
                return int(status.events_applied)
            time.sleep(0.5)


def _errors(result: lt.LoadResult) -> dict[str, int]:
    codes, counts = np.unique(np.asarray(result.samples.code, dtype=object), return_counts=True)
    return {str(c): int(n) for c, n in zip(codes, counts)}


def _print(report: dict[str, Any], console) -> None:
    from rich.table import Table

    minutes = Table(title="per minute (after the load generator's warm-up)", title_justify="left")
    for col in report["minutes"][0] if report["minutes"] else ():
        minutes.add_column(col, justify="right")
    for row in report["minutes"]:
        minutes.add_row(*("-" if v is None else str(v) for v in row.values()))
    console.print(minutes)
    memory = Table(title=f"RSS per process (MiB); bound: {report['rss_bound']}")
    for col in report["memory"][0]:
        memory.add_column(col, justify="right")
    for row in report["memory"]:
        memory.add_row(*(str(v) for v in row.values()))
    console.print(memory)
    console.print(
        f"calls {report['calls']}, errors {report['errors'] or 'none'}; "
        f"{'PASSED' if report['passed'] else 'FAILED'}"
    )
    print(json.dumps({k: v for k, v in report.items() if k != "minutes"}))


def write_report(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
