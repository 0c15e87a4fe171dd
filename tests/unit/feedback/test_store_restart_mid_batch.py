"""A state store that restarts mid-batch without the batch's writes (Redis killed and
restarted from an AOF missing its last second) while its offsets still say the batch
before: nothing shows a gap, so the worker applies the batch again before recording its
offsets (the event-id marks make what survived a no-op)."""

from __future__ import annotations

import copy

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus.memory import InMemoryBus
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores.base import StoreUnavailable
from shortlist.feedback.stores.memory import InMemoryStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.models.spectral import SpectralCF, SpectralConfig
from shortlist.training.pipeline import retrieval_bundle


class RestartsWithoutTheBatch:
    """An in-memory store whose first `record_offsets` finds it restarted from the state it
    had when the batch began (the batch's writes lost) and fails, as a reset connection."""

    def __init__(self) -> None:
        self.inner = InMemoryStateStore()
        self.restarts = 0
        self._before: dict | None = None

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def prepare(self, *args, **kwargs):
        if self._before is None:
            self._before = copy.deepcopy(
                {k: v for k, v in vars(self.inner).items() if k != "_lock"}
            )
        return self.inner.prepare(*args, **kwargs)

    def record_offsets(self, *args, **kwargs):
        if self.restarts == 0:
            self.restarts = 1
            vars(self.inner).update(copy.deepcopy(self._before))
            raise StoreUnavailable("connection reset by peer (restarted)")
        return self.inner.record_offsets(*args, **kwargs)


def test_a_batch_lost_with_a_store_restart_before_its_offsets_is_applied_again(tmp_path):
    data = generate(n_users=30, n_items=40, n_topics=3, likes_per_user=6, seed=5)
    model = SpectralCF(SpectralConfig(rank=8, ideal_rank=4))
    model.fit(data)
    bundle = load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path))
    store, bus = RestartsWithoutTheBatch(), InMemoryBus()
    worker = FeedbackWorker(bundle, store, bus.consumer(), Settings.from_env({}, backend="memory"))
    users = [bundle.users.id(n) for n in range(5)]
    events = [
        Event(f"e{n}", users[n % 5], bundle.items.id(30 + n // 5), Kind.LIKE, 1_700_000_000_000 + n)
        for n in range(20)
    ]
    bus.publisher().publish(events, 1.0)
    assert worker.run_once(1000) == 20
    assert store.restarts == 1
    # every event applied once: each user liked 4 new items
    for user in users:
        assert store.user_state(user, bundle.version).likes == 4
    assert worker.run_once(50) == 0  # nothing left to consume
