"""Open-loop load generator for `shortlist.v1.Gateway` (`shortlist loadtest`).

Requests are issued on a fixed schedule, request i at ``t0 + i / rate``, whatever the replies
do (open loop, not closed loop), and every latency is measured from the *scheduled* send
time, so a slow server or a lagging generator shows up in the percentiles instead of quietly
lowering the offered load (no coordinated omission). One asyncio event loop drives all calls
over `connections` `grpc.aio` channels (TCP connections), request i on channel i mod n: a
server of several processes on one port (SO_REUSEPORT) spreads connections, not calls, and
the kernel's hash of the connections decides each process's share. A target of several
comma-separated addresses (the gateway workers' own ports) puts channel c on address
c mod n instead, so that each address gets the same share of the calls (within one
connection's, when the connections are not a multiple of the addresses).

With ``http=True`` the same calls go to the HTTP/JSON front door instead (``target`` is its
HOST:PORT; `POST /v1/recommend` and `/v1/feedback` over ``connections`` keep-alive
connections of one aiohttp session), so that the two can be compared on the same stack.
gRPC calls go through `shortlist.client.AsyncClient`, without retries (a retry would hide
an error and count as one slower call).

The first ``warmup_s`` seconds are sent but not counted. Users are drawn with a Zipf-like skew
from a list (``--users FILE`` or ``user-0000``.. ``user-NNNN``), plus a share of never-seen
ids (cold start). A share of the arrivals can be `SendFeedback` calls: a like or dislike of an
item that an earlier `Recommend` returned to that same user.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import os
import platform
import random
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from shortlist.client import AsyncClient, Feedback, Recommendation
from shortlist.models.progress import bar

RECOMMEND, FEEDBACK = 0, 1
# The event loop wakes up to ~1 ms late (epoll timeouts are whole milliseconds), so calls due
# within this much are sent now; their latency then starts at the actual send.
LOOKAHEAD_S = 0.001
BAR_TICK_S = 0.5  # how often the progress bar moves
# A p99 send lag above this marks the run as limited by the generator, not only the server.
GENERATOR_LAG_S = 0.010
KIND_NAMES = ("Recommend", "SendFeedback")

# Request-context mix: devices by share, hours by a diurnal weight (evening peak).
DEVICES = (("ios", 0.42), ("android", 0.36), ("web", 0.18), ("tv", 0.04))
HOUR_WEIGHTS = (
    2, 1, 1, 1, 1, 2, 4, 6, 7, 6, 5, 5, 6, 5, 5, 5, 6, 7, 8, 9, 10, 9, 7, 4,
)  # fmt: skip


@dataclass
class LoadConfig:
    target: str
    rate: float
    duration_s: float
    warmup_s: float = 2.0
    users: Sequence[str] | None = None  # None: user-0000 .. user-{n_users-1}
    n_users: int = 1000
    zipf: float = 0.8  # skew exponent: weight of the r-th most active user ~ 1 / r**zipf
    unknown_share: float = 0.05  # share of Recommend calls for never-seen users (cold start)
    feedback_share: float = 0.0  # share of arrivals that are SendFeedback calls
    k: int = 20
    concurrency: int = 0  # max calls in flight; 0 = unbounded (pure open loop)
    connections: int = 1
    timeout_s: float = 2.0
    seed: int = 0
    # Processes whose CPU time is reported per request (name -> pid), e.g. the local stack's.
    watch_pids: dict[str, int] | None = None
    http: bool = False  # call the HTTP/JSON front door at `target` instead of gRPC
    api_key: str | None = None

    def validate(self) -> None:
        if self.rate <= 0:
            raise ValueError(f"rate must be > 0, got {self.rate}")
        if self.duration_s <= 0:
            raise ValueError(f"duration must be > 0, got {self.duration_s}")
        if self.warmup_s < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup_s}")
        for name in ("unknown_share", "feedback_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in 0..1, got {value}")
        if self.users is not None and not self.users:
            raise ValueError("the users list is empty")
        if self.users is None and self.n_users < 1:
            raise ValueError(f"n_users must be >= 1, got {self.n_users}")
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.concurrency < 0:
            raise ValueError(f"concurrency must be >= 0, got {self.concurrency}")
        if self.connections < 1:
            raise ValueError(f"connections must be >= 1, got {self.connections}")
        targets = self.targets
        if not all(targets):
            raise ValueError(f"target has an empty address: {self.target!r}")
        if self.connections < len(targets):
            raise ValueError(
                f"connections ({self.connections}) must be >= the {len(targets)} target "
                "addresses, one at least for each"
            )

    @property
    def targets(self) -> list[str]:
        """The addresses of `target` ("HOST:PORT" or a comma-separated list of them)."""
        return [t.strip() for t in self.target.split(",")]


@dataclass
class Samples:
    """One row per completed call, in columns (offsets are seconds since t0)."""

    scheduled: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    kind: list[int] = field(default_factory=list)
    code: list[str] = field(default_factory=list)
    # Every SendFeedback: (user, client event id, kind, acknowledged, done offset), so that a
    # run can check which acknowledged events were applied.
    feedback: list[tuple[str, str, str, bool, float]] = field(default_factory=list)
    t0: float = 0.0  # the event loop's clock (time.monotonic) at offset 0

    def add(self, scheduled: float, sent: float, latency: float, kind: int, code: str) -> None:
        self.scheduled.append(scheduled)
        self.sent.append(sent)
        self.latency.append(latency)
        self.kind.append(kind)
        self.code.append(code)


@dataclass
class LoadResult:
    config: LoadConfig
    samples: Samples
    summary: dict[str, Any]


def read_users(path: str | Path) -> list[str]:
    """User ids, one a line; blank lines and `#` comments are skipped."""
    users = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            users.append(line)
    if not users:
        raise ValueError(f"no user ids in {path}")
    return users


def machine_info() -> dict[str, Any]:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count() or 0
    return {
        "cpu_model": model,
        "cores": os.cpu_count() or 0,
        "cores_usable": usable,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "grpcio": grpc.__version__,
        "os": f"{platform.system()} {platform.release()}",
    }


class _Workload:
    """Draws who calls and with what context; remembers what each user was shown."""

    def __init__(self, config: LoadConfig, total: int) -> None:
        self.config = config
        users = list(config.users) if config.users is not None else None
        if users is None:
            width = max(4, len(str(config.n_users - 1)))
            users = [f"user-{u:0{width}d}" for u in range(config.n_users)]
        self.users = users
        rng = np.random.default_rng(config.seed)
        ranks = np.arange(1, len(users) + 1, dtype=np.float64)
        weights = ranks ** -float(config.zipf)
        order = rng.permutation(len(users))  # which user is the most active is arbitrary
        draws = rng.choice(len(users), size=total, p=weights / weights.sum())
        self.user_index = order[draws].tolist()
        self.cold = (rng.random(total) < config.unknown_share).tolist()
        self.feedback = (rng.random(total) < config.feedback_share).tolist()
        self.rng = random.Random(config.seed)
        self.devices = [d for d, _ in DEVICES]
        self.device_weights = [w for _, w in DEVICES]
        self.run_id = f"{self.rng.getrandbits(32):08x}"
        # Users recently shown items: (user, item ids); feedback is about these.
        self.shown: collections.deque[tuple[str, list[str]]] = collections.deque(maxlen=2048)

    def context(self) -> dict[str, str]:
        rng = self.rng
        return {
            "hour": str(rng.choices(range(24), HOUR_WEIGHTS)[0]),
            "day_of_week": str(rng.randrange(7)),
            "device": rng.choices(self.devices, self.device_weights)[0],
        }

    def request(self, i: int) -> tuple[int, Any, str]:
        """(kind, what to send, user) for arrival i: a Feedback, or a Recommend's context."""
        if self.feedback[i] and self.shown:
            user, items = self.shown[self.rng.randrange(len(self.shown))]
            # Most interactions are on the top of the list; likes outnumber dislikes.
            item = items[min(int(self.rng.expovariate(0.5)), len(items) - 1)]
            kind = "dislike" if self.rng.random() < 0.3 else "like"
            event_id = f"lt-{self.run_id}-{i}"  # known here, so that it can be audited
            return FEEDBACK, Feedback(user, item, kind, event_id=event_id), user
        if self.cold[i]:
            user = f"loadtest-cold-{self.run_id}-{i}"
        else:
            user = self.users[self.user_index[i]]
        return RECOMMEND, self.context(), user

    def remember(self, user: str, item_ids: list[str]) -> None:
        if self.config.feedback_share > 0 and item_ids:
            self.shown.append((user, item_ids))


def _code_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    if isinstance(exc, HttpStatusError):
        return exc.code
    if isinstance(exc, asyncio.TimeoutError):
        return "DEADLINE_EXCEEDED"
    return f"CLIENT_{type(exc).__name__}"


class HttpStatusError(Exception):
    """A non-200 HTTP answer; `code` is the gRPC code name of its error body."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class _GrpcCaller:
    """Recommend and SendFeedback over `connections` gRPC channels (AsyncClient each)."""

    def __init__(self, config: LoadConfig) -> None:
        targets = config.targets
        self.clients = [
            AsyncClient(
                targets[c % len(targets)],
                config.api_key,
                timeout_s=config.timeout_s,
                max_attempts=1,
                options=[("grpc.use_local_subchannel_pool", 1)],  # a connection of its own each
            )
            for c in range(config.connections)
        ]
        self.k = config.k

    async def recommend(self, i: int, user: str, context: dict[str, str]) -> list[str]:
        reply: Recommendation = await self.clients[i % len(self.clients)].recommend(
            user, self.k, context=context
        )
        return reply.item_ids

    async def feedback(self, i: int, event: Feedback) -> None:
        await self.clients[i % len(self.clients)].send_feedback(event)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()


class _HttpCaller:
    """The same calls as JSON over HTTP/1.1 keep-alive connections (aiohttp)."""

    def __init__(self, config: LoadConfig) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        targets = config.targets
        self.urls = [f"http://{t}" for t in targets]
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=config.connections, force_close=False),
            timeout=aiohttp.ClientTimeout(total=config.timeout_s),
            headers={"x-api-key": config.api_key} if config.api_key else None,
        )
        self.k = config.k

    async def _post(self, i: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.urls[i % len(self.urls)] + path
        async with self.session.post(url, json=body) as reply:
            answer = await reply.json(content_type=None)
            if reply.status != 200:
                error = answer.get("error", {}) if isinstance(answer, dict) else {}
                raise HttpStatusError(error.get("status") or f"HTTP_{reply.status}")
            return answer

    async def recommend(self, i: int, user: str, context: dict[str, str]) -> list[str]:
        body = {"userId": user, "k": self.k, "context": context}
        answer = await self._post(i, "/v1/recommend", body)
        return [item["itemId"] for item in answer["items"]]

    async def feedback(self, i: int, event: Feedback) -> None:
        message = event.to_proto()
        body = {
            "events": [
                {
                    "eventId": message.event_id,
                    "userId": event.user_id,
                    "itemId": event.item_id,
                    "kind": f"FEEDBACK_KIND_{event.kind.upper()}",
                }
            ]
        }
        await self._post(i, "/v1/feedback", body)

    async def close(self) -> None:
        await self.session.close()


async def _drive(config: LoadConfig, on_progress: Callable[[str], None] | None) -> Samples:
    total = max(1, int(round(config.rate * (config.warmup_s + config.duration_s))))
    workload = _Workload(config, total)
    samples = Samples()
    loop = asyncio.get_running_loop()
    caller = _HttpCaller(config) if config.http else _GrpcCaller(config)
    limit = asyncio.Semaphore(config.concurrency) if config.concurrency else None
    pending: set[asyncio.Task] = set()
    timeout = config.timeout_s

    async def call(i: int, scheduled: float, t0: float) -> None:
        kind, request, user = workload.request(i)
        if limit is not None:
            await limit.acquire()
        sent = loop.time()
        code = "OK"
        try:
            if kind == RECOMMEND:
                workload.remember(user, await caller.recommend(i, user, request))
            else:
                await caller.feedback(i, request)
        except Exception as exc:  # counted by status code, never fatal
            code = _code_name(exc)
        finally:
            if limit is not None:
                limit.release()
        done = loop.time()
        if kind == FEEDBACK:
            acked = code == "OK"
            samples.feedback.append(
                (request.user_id, request.event_id, request.kind, acked, done - t0)
            )
        # From the scheduled time (a late send counts against the server, no coordinated
        # omission), or from the actual send when it went out up to LOOKAHEAD_S early.
        samples.add(scheduled - t0, sent - t0, done - min(scheduled, sent), kind, code)

    try:
        interval = 1.0 / config.rate
        t0 = loop.time() + 0.01
        samples.t0 = t0
        next_report = t0 + 1.0
        # The bar counts requests sent on schedule (its ETA: the schedule's end); it moves
        # every BAR_TICK_S, not per request, to keep the load generator's own work small.
        next_tick, shown = t0 + BAR_TICK_S, 0
        i = 0
        with bar("load test requests", total) as advance:
            while i < total:
                now = loop.time()
                due = min(total, int((now + LOOKAHEAD_S - t0) * config.rate) + 1)
                while i < due:
                    task = loop.create_task(call(i, t0 + i * interval, t0))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    i += 1
                if now >= next_tick and i < total:
                    next_tick += BAR_TICK_S
                    advance(i - shown)
                    shown = i
                if on_progress is not None and now >= next_report:
                    next_report += 1.0
                    on_progress(
                        f"t={now - t0:5.1f}s sent={i} in_flight={len(pending)} "
                        f"done={len(samples.code)}"
                    )
                delay = t0 + i * interval - LOOKAHEAD_S - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    await asyncio.sleep(0)  # let replies in even when behind schedule
        if pending:
            await asyncio.wait(set(pending), timeout=timeout + 5.0)
        for task in list(pending):
            task.cancel()
    finally:
        await caller.close()
    return samples


def _pct(values: np.ndarray, q: float) -> float | None:
    if values.size == 0:
        return None
    return round(float(np.percentile(values, q)) * 1000.0, 3)


def summarize(config: LoadConfig, samples: Samples, cpu_s: float, wall_s: float) -> dict:
    scheduled = np.asarray(samples.scheduled)
    sent = np.asarray(samples.sent)
    latency = np.asarray(samples.latency)
    kind = np.asarray(samples.kind, dtype=np.int64)
    code = np.asarray(samples.code, dtype=object)
    w0, w1 = config.warmup_s, config.warmup_s + config.duration_s
    window = (scheduled >= w0 - 1e-9) & (scheduled < w1 - 1e-9)
    n = int(window.sum())
    last_sent = float(sent[window].max()) if n else w1
    span = max(w1, last_sent + 1.0 / config.rate) - w0
    rec = window & (kind == RECOMMEND)
    fb = window & (kind == FEEDBACK)
    ok = window & (code == "OK")

    def errors(mask: np.ndarray) -> dict[str, int]:
        names, counts = np.unique(code[mask & (code != "OK")].astype(str), return_counts=True)
        return {str(a): int(b) for a, b in zip(names, counts)}

    lag = (sent - scheduled)[window]
    rec_lat = latency[rec]
    done_ok = (scheduled + latency)[ok]
    summary: dict[str, Any] = {
        "target": config.target,
        "protocol": "http" if config.http else "grpc",
        "rate": config.rate,
        "achieved_rps": round(n / span, 2) if span > 0 else 0.0,
        "ok_rps": round(int(ok.sum()) / (max(w1, float(done_ok.max())) - w0), 2)
        if done_ok.size
        else 0.0,
        "requests": n,
        "recommend_requests": int(rec.sum()),
        "feedback_requests": int(fb.sum()),
        "ok": int(ok.sum()),
        "p50_ms": _pct(rec_lat, 50),
        "p95_ms": _pct(rec_lat, 95),
        "p99_ms": _pct(rec_lat, 99),
        "p999_ms": _pct(rec_lat, 99.9),
        "max_ms": round(float(rec_lat.max()) * 1000.0, 3) if rec_lat.size else None,
        "mean_ms": round(float(rec_lat.mean()) * 1000.0, 3) if rec_lat.size else None,
        "errors": errors(window),
        "feedback": {
            "p50_ms": _pct(latency[fb], 50),
            "p99_ms": _pct(latency[fb], 99),
            "max_ms": round(float(latency[fb].max()) * 1000.0, 3) if fb.any() else None,
            "errors": errors(fb),
        },
        "send_lag_p99_ms": _pct(lag, 99),
        "send_lag_max_ms": round(float(lag.max()) * 1000.0, 3) if lag.size else None,
        # Calls went out late: the generator (or its machine) was the bottleneck too.
        "generator_behind": bool(lag.size and np.percentile(lag, 99) > GENERATOR_LAG_S),
        "not_completed": max(0, int(round(config.rate * config.duration_s)) - n),
        "duration_s": config.duration_s,
        "warmup_s": config.warmup_s,
        "k": config.k,
        "feedback_share": config.feedback_share,
        "unknown_share": config.unknown_share,
        "zipf": config.zipf,
        "users": len(config.users) if config.users is not None else config.n_users,
        "concurrency": config.concurrency,
        "connections": config.connections,
        "timeout_s": config.timeout_s,
        "loadgen_cpu_percent": round(100.0 * cpu_s / wall_s, 1) if wall_s > 0 else None,
        "machine": machine_info(),
    }
    return summary


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (and its reaped children) from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks  # utime stime cutime cstime


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_per_request(
    before: dict[str, float | None], after: dict[str, float | None], calls: int
) -> dict[str, float]:
    """CPU milliseconds per call by process (the whole run, warm-up included), and the sum."""
    out = {}
    for name, start in before.items():
        end = after.get(name)
        if start is not None and end is not None and calls:
            out[name] = round(1000.0 * (end - start) / calls, 3)
    out["total"] = round(sum(out.values()), 3)
    return out


def run(config: LoadConfig, on_progress: Callable[[str], None] | None = None) -> LoadResult:
    """Run one load test (blocking; starts and closes its own event loop)."""
    config.validate()
    watched = dict(config.watch_pids or {})

    def snapshot() -> dict[str, float | None]:
        cpu = {name: process_cpu_seconds(pid) for name, pid in watched.items()}
        return {**cpu, "loadgen": _cpu_seconds()}

    load0 = load_average()
    before = snapshot()
    cpu0, wall0 = _cpu_seconds(), time.perf_counter()
    samples = asyncio.run(_drive(config, on_progress))
    cpu_s, wall_s = _cpu_seconds() - cpu0, time.perf_counter() - wall0
    after = snapshot()
    summary = summarize(config, samples, cpu_s, wall_s)
    summary["cpu_ms_per_request"] = cpu_per_request(before, after, len(samples.code))
    summary["load_average_before"] = load0
    summary["load_average_after"] = load_average()
    return LoadResult(config, samples, summary)


def per_second(result: LoadResult) -> dict[str, list[float]]:
    """Per-second series over the whole run (warm-up included), by scheduled second."""
    s = result.samples
    if not s.code:
        return {"t": [], "p50_ms": [], "p99_ms": [], "rps": [], "errors": []}
    scheduled = np.asarray(s.scheduled)
    sent = np.asarray(s.sent)
    latency = np.asarray(s.latency) * 1000.0
    kind = np.asarray(s.kind)
    failed = np.asarray(s.code, dtype=object) != "OK"
    total_s = result.config.warmup_s + result.config.duration_s
    seconds = int(math.ceil(total_s))
    bucket = np.clip(scheduled.astype(np.int64), 0, seconds - 1)
    sent_bucket = np.clip(sent.astype(np.int64), 0, None)
    out: dict[str, list[float]] = {"t": [], "p50_ms": [], "p99_ms": [], "rps": [], "errors": []}
    for sec in range(seconds):
        mask = (bucket == sec) & (kind == RECOMMEND)
        values = latency[mask]
        out["t"].append(sec + 0.5)
        out["p50_ms"].append(float(np.percentile(values, 50)) if values.size else math.nan)
        out["p99_ms"].append(float(np.percentile(values, 99)) if values.size else math.nan)
        width = min(1.0, total_s - sec)  # the last second may be a partial one
        out["rps"].append(float((sent_bucket == sec).sum()) / width)
        out["errors"].append(float((failed & (bucket == sec)).sum()) / width)
    return out


def plot(result: LoadResult, path: str | Path) -> Path:
    """Latency over time (p50/p99 per second) and achieved requests/s, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter

    series = per_second(result)
    cfg, summary = result.config, result.summary
    fig, (ax_lat, ax_rps) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    ax_lat.plot(series["t"], series["p50_ms"], label="p50", color="tab:blue")
    ax_lat.plot(series["t"], series["p99_ms"], label="p99", color="tab:red")
    ax_lat.set_ylabel("Recommend latency (ms)")
    ax_lat.set_yscale("log")
    ax_lat.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax_lat.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    ax_lat.tick_params(axis="y", which="minor", labelsize=7)
    ax_lat.grid(True, which="both", alpha=0.3)
    ax_rps.plot(series["t"], series["rps"], label="sent/s", color="tab:green")
    ax_rps.axhline(cfg.rate, linestyle="--", color="gray", label=f"target {cfg.rate:g}/s")
    if any(series["errors"]):
        ax_rps.bar(series["t"], series["errors"], width=0.8, color="tab:red", label="errors/s")
    ax_rps.set_ylabel("requests / s")
    ax_rps.set_xlabel("seconds since start")
    ax_rps.set_ylim(0, 1.15 * max([cfg.rate, *series["rps"]]))
    ax_rps.grid(True, alpha=0.3)
    for ax in (ax_lat, ax_rps):
        if cfg.warmup_s > 0:
            ax.axvspan(0, cfg.warmup_s, color="gray", alpha=0.12, label="warm-up")
        ax.legend(loc="upper right", fontsize=8)
    machine = summary["machine"]
    fig.suptitle(
        f"shortlist loadtest {cfg.target}: {cfg.rate:g}/s open loop, k={cfg.k}; "
        f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms\n"
        f"{machine['cpu_model']}, {machine['cores']} cores, Python {machine['python']}",
        fontsize=9,
    )
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def print_report(summary: dict[str, Any], console) -> None:
    """Rich tables: results, errors by code, the machine."""
    from rich.table import Table

    def fmt(value: Any) -> str:
        return "-" if value is None else f"{value:g}" if isinstance(value, float) else str(value)

    table = Table(title=f"loadtest {summary['target']}", title_justify="left", min_width=40)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, label in (
        ("rate", "target rate (req/s)"),
        ("achieved_rps", "achieved rate (req/s)"),
        ("ok_rps", "OK replies (req/s)"),
        ("requests", "requests counted"),
        ("recommend_requests", "  Recommend"),
        ("feedback_requests", "  SendFeedback"),
        ("duration_s", "measured (s)"),
        ("warmup_s", "warm-up (s)"),
        ("p50_ms", "Recommend p50 (ms)"),
        ("p95_ms", "Recommend p95 (ms)"),
        ("p99_ms", "Recommend p99 (ms)"),
        ("p999_ms", "Recommend p99.9 (ms)"),
        ("max_ms", "Recommend max (ms)"),
        ("send_lag_p99_ms", "generator lag p99 (ms)"),
        ("loadgen_cpu_percent", "generator CPU (%)"),
    ):
        table.add_row(label, fmt(summary[key]))
    for name, ms in summary.get("cpu_ms_per_request", {}).items():
        table.add_row(f"CPU per call, {name} (ms)", fmt(ms))
    for key in ("load_average_before", "load_average_after"):
        if summary.get(key):
            table.add_row(key.replace("_", " ") + " (1/5/15 min)", " ".join(map(str, summary[key])))
    if summary["feedback_requests"]:
        table.add_row("SendFeedback p50 (ms)", fmt(summary["feedback"]["p50_ms"]))
        table.add_row("SendFeedback p99 (ms)", fmt(summary["feedback"]["p99_ms"]))
    console.print(table)
    if summary["generator_behind"]:
        console.print(
            "[yellow]warning: the generator sent late (lag p99 "
            f"{summary['send_lag_p99_ms']} ms); latencies include its own overload[/yellow]"
        )

    errors = Table(title="errors by status code", title_justify="left", min_width=30)
    errors.add_column("code")
    errors.add_column("count", justify="right")
    for code, count in sorted(summary["errors"].items()):
        errors.add_row(code, str(count))
    if not summary["errors"]:
        errors.add_row("(none)", "0")
    console.print(errors)

    machine = Table(title="machine", title_justify="left", min_width=30)
    machine.add_column("")
    machine.add_column("")
    for key, value in summary["machine"].items():
        machine.add_row(key, str(value))
    console.print(machine)


def json_line(summary: dict[str, Any]) -> str:
    return json.dumps(summary, separators=(",", ":"), allow_nan=False)


def main_report(result: LoadResult, console, plot_path: str | Path | None = None) -> None:
    """What the CLI prints: tables, the optional plot, and the JSON summary as the last line."""
    print_report(result.summary, console)
    if plot_path:
        written = plot(result, plot_path)
        result.summary["plot"] = str(written)
        console.print(f"plot: {written}")
    sys.stdout.write(json_line(result.summary) + "\n")
    sys.stdout.flush()


__all__ = ["LoadConfig", "LoadResult", "main_report", "plot", "read_users", "run"]
