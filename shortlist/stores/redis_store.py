"""Redis state store. Every call is one pipelined round trip; `apply` is one MULTI/EXEC."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import redis

from shortlist.events import Event, Kind
from shortlist.stores.base import (
    DEDUP_TTL_S,
    HISTORY_LENGTH,
    PendingBatch,
    RankingSignals,
    StoreUnavailable,
    UserState,
    decode_history,
    encode_history,
)
from shortlist.telemetry import REDIS_LATENCY


class RedisStateStore:
    """Keys (under `prefix`): u:{user}:seen / :dis (sets), :hist (list), :vec:{version}
    (float32 bytes), :likes (counter); i:likes (hash item -> live likes); ev:{id} (dedup)."""

    def __init__(
        self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "sl:", timeout_s: float = 0.5
    ) -> None:
        self.prefix = prefix
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            health_check_interval=30,
        )

    def _u(self, user_id: str, what: str) -> str:
        return f"{self.prefix}u:{user_id}:{what}"

    def _run(self, pipe: redis.client.Pipeline, operation: str) -> list:
        start = time.perf_counter()
        try:
            return pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        finally:
            REDIS_LATENCY.labels(operation).observe(time.perf_counter() - start)

    def ping(self) -> None:
        try:
            self._redis.ping()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def user_state(self, user_id: str, version: str) -> UserState:
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._u(user_id, f"vec:{version}"))
        pipe.smembers(self._u(user_id, "seen"))
        pipe.smembers(self._u(user_id, "dis"))
        raw_vec, seen, disliked = self._run(pipe, "user_state")
        return UserState(
            vector=None if raw_vec is None else np.frombuffer(raw_vec, np.float32).copy(),
            seen={s.decode() for s in seen},
            disliked={s.decode() for s in disliked},
        )

    def ranking_signals(self, user_id: str, item_ids: Sequence[str]) -> RankingSignals:
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(self._u(user_id, "hist"), 0, -1)
        pipe.get(self._u(user_id, "likes"))
        if item_ids:
            pipe.hmget(f"{self.prefix}i:likes", list(item_ids))
        results = self._run(pipe, "ranking_signals")
        hist, likes = results[0], results[1]
        counts = results[2] if item_ids else []
        return RankingSignals(
            history=[decode_history(h) for h in hist],
            live_likes=np.array([int(c) if c else 0 for c in counts], np.float32),
            likes=int(likes or 0),
        )

    def prepare(self, events: Sequence[Event]) -> PendingBatch:
        users = sorted({e.user_id for e in events})
        pipe = self._redis.pipeline(transaction=False)
        for e in events:
            pipe.exists(f"{self.prefix}ev:{e.event_id}")
        for u in users:
            pipe.lrange(self._u(u, "hist"), 0, -1)
        results = self._run(pipe, "prepare")
        exists, hists = results[: len(events)], results[len(events) :]
        return PendingBatch(
            new=[not x for x in exists],
            histories={u: [decode_history(h) for h in hist] for u, hist in zip(users, hists)},
        )

    def apply(
        self, events: Sequence[Event], vectors: Mapping[str, np.ndarray], version: str
    ) -> None:
        pipe = self._redis.pipeline(transaction=True)
        for e in events:
            pipe.set(f"{self.prefix}ev:{e.event_id}", 1, ex=DEDUP_TTL_S)
            pipe.sadd(self._u(e.user_id, "seen"), e.item_id)
            if e.kind == Kind.DISLIKE:
                pipe.sadd(self._u(e.user_id, "dis"), e.item_id)
            elif e.kind == Kind.LIKE:
                pipe.srem(self._u(e.user_id, "dis"), e.item_id)
                pipe.incr(self._u(e.user_id, "likes"))
                pipe.hincrby(f"{self.prefix}i:likes", e.item_id, 1)
            pipe.lpush(self._u(e.user_id, "hist"), encode_history(e.item_id, e.kind))
        for user in {e.user_id for e in events}:
            pipe.ltrim(self._u(user, "hist"), 0, HISTORY_LENGTH - 1)
        for user, vec in vectors.items():
            pipe.set(self._u(user, f"vec:{version}"), np.asarray(vec, np.float32).tobytes())
        self._run(pipe, "apply")

    def close(self) -> None:
        self._redis.close()
