"""Live user and item state written by the feedback service and read at request time.

`RedisStateStore` is the real backend; `InMemoryStateStore` is the embedded default of the
quickstart. Both implement `StateStore` and pass the same contract tests.
"""

from shortlist.feedback.stores.base import StateStore, StoreUnavailable, UserState
from shortlist.feedback.stores.memory import InMemoryStateStore
from shortlist.feedback.stores.redis_router import RedisTLS, redis_client
from shortlist.feedback.stores.redis_store import RedisStateStore

__all__ = [
    "InMemoryStateStore",
    "RedisStateStore",
    "RedisTLS",
    "StateStore",
    "StoreUnavailable",
    "UserState",
    "redis_client",
]
