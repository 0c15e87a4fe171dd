"""HTTP/JSON against gRPC on the same local stack, in the same run (`make bench-http`).

The local stack (`shortlist up` processes on free ports of their own, co-located: one gateway
process with retrieval and ranking inside, Redis and tansu) serves both front doors; the same
open-loop `shortlist loadtest` runs over gRPC and over HTTP in alternating rounds (the order
flips each round, so that drift of a shared host falls on both alike), each round with its
own warm-up. Per protocol the report gives the median over rounds of p50, p99 and mean
Recommend latency and of the gateway process's CPU per call; the overhead is HTTP minus gRPC.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shortlist.config import Settings
from shortlist.models.progress import track
from shortlist.tools import loadtest as lt
from shortlist.tools.bench.soak import ensure_bundle, soak_settings

PROTOCOLS = ("grpc", "http")


@dataclass
class HttpBenchConfig:
    rate: float = 100.0
    duration_s: float = 15.0
    warmup_s: float = 3.0
    rounds: int = 3
    connections: int = 8
    k: int = 20
    bundle: str = "artifacts"


def run(config: HttpBenchConfig, say=print) -> dict[str, Any]:
    from shortlist.tools import stack

    settings = soak_settings(Settings.from_env(bundle=config.bundle)).replace(
        colocate=1, gateway_workers=1, redis_prefix="bench-http:", feedback_topic="bench.http"
    )
    ensure_bundle(Path(settings.bundle), _Quiet(say))
    say(f"bench http: local stack on {settings.gateway_addr} and {settings.gateway_http_addr}")
    pids = stack.up(settings)
    runs: dict[str, list[dict[str, Any]]] = {p: [] for p in PROTOCOLS}
    try:
        gateway = {"gateway": pids["gateway"]}
        for r in track(range(config.rounds), "http overhead rounds"):
            order = PROTOCOLS if r % 2 == 0 else PROTOCOLS[::-1]
            for protocol in order:
                http = protocol == "http"
                result = lt.run(
                    lt.LoadConfig(
                        target=settings.gateway_http_addr if http else settings.gateway_addr,
                        rate=config.rate,
                        duration_s=config.duration_s,
                        warmup_s=config.warmup_s,
                        k=config.k,
                        connections=config.connections,
                        seed=r,
                        http=http,
                        watch_pids=gateway,
                    )
                )
                s = result.summary
                runs[protocol].append(
                    {
                        "round": r,
                        "p50_ms": s["p50_ms"],
                        "p99_ms": s["p99_ms"],
                        "mean_ms": s["mean_ms"],
                        "achieved_rps": s["achieved_rps"],
                        "errors": s["errors"],
                        "gateway_cpu_ms": s["cpu_ms_per_request"].get("gateway"),
                        "loadgen_cpu_ms": s["cpu_ms_per_request"].get("loadgen"),
                    }
                )
                say(
                    f"round {r} {protocol}: p50 {s['p50_ms']} ms, p99 {s['p99_ms']} ms, "
                    f"gateway CPU {s['cpu_ms_per_request'].get('gateway')} ms/call, "
                    f"errors {s['errors'] or 'none'}"
                )
    finally:
        stack.down()

    def median(protocol: str, key: str) -> float | None:
        values = [x[key] for x in runs[protocol] if x[key] is not None]
        return round(statistics.median(values), 3) if values else None

    report: dict[str, Any] = {
        "rate": config.rate,
        "duration_s": config.duration_s,
        "rounds": config.rounds,
        "connections": config.connections,
        "k": config.k,
        "topology": "colocated, 1 gateway process",
        "machine": lt.machine_info(),
    }
    for protocol in PROTOCOLS:
        report[protocol] = {
            key: median(protocol, key)
            for key in ("p50_ms", "p99_ms", "mean_ms", "gateway_cpu_ms", "loadgen_cpu_ms")
        }
        report[protocol]["errors"] = sum(sum(x["errors"].values()) for x in runs[protocol])
        report[protocol]["runs"] = runs[protocol]
    report["overhead"] = {
        key: _difference(report["http"][key], report["grpc"][key])
        for key in ("p50_ms", "p99_ms", "mean_ms", "gateway_cpu_ms")
    }
    return report


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round(a - b, 3)


class _Quiet:
    """The console interface ensure_bundle uses, printing through `say`."""

    def __init__(self, say) -> None:
        self.say = say

    def status(self, message: str):
        import contextlib

        self.say(message)
        return contextlib.nullcontext()
