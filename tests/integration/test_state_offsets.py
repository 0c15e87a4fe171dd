"""Consumer offsets kept with the state (issue 27): a Redis that restarts from an AOF which
lost its tail makes the worker consume again from the offset Redis still has (at its next
batch, or when idle at its next check), so nothing acknowledged is lost and nothing is
applied twice."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import pytest
import redis

from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.tools.stack import free_port, port_open, wait_for
from tests.conftest import eventually, unique

pytestmark = pytest.mark.integration


def test_record_offsets_moves_forward_and_answers_gaps(store):
    a, b = ("t", 0), ("t", 1)
    assert store.record_offsets("g", {a: (0, 10), b: (0, 5)}) == {}
    assert store.record_offsets("g", {a: (10, 20)}) == {}
    assert store.record_offsets("g", {a: (5, 15)}) == {}  # a replay: the offset stays 20
    # the store has 20 for a, the consumer went on from 30: writes 20..29 were lost
    assert store.record_offsets("g", {a: (30, 40), b: (5, 8)}) == {a: 20}
    assert store.record_offsets("g", {a: (20, 40)}) == {}  # consumed again from 20
    assert store.record_offsets("other-group", {a: (30, 40)}) == {}
    # next 0: a check that writes nothing
    assert store.record_offsets("g", {a: (50, 0)}) == {a: 40}
    assert store.record_offsets("g", {("t", 9): (7, 0)}) == {}
    assert store.record_offsets("g", {("t", 9): (8, 0)}) == {}  # nothing was stored for it


def test_record_offsets_start_over_on_a_log_made_again(store):
    """A stored offset above the log's end (the topic was made again, a broker lost its
    log) would hide every gap of the new log until it grew past it: it is reset."""
    a = ("t", 0)
    assert store.record_offsets("g", {a: (0, 5000)}, {a: 5000}) == {}
    assert store.record_offsets("g", {a: (0, 40)}, {a: 60}) == {}  # the new log: 60 long
    # the store lost writes after 40 of the new log: the gap shows again
    assert store.record_offsets("g", {a: (45, 60)}, {a: 60}) == {a: 40}
    # a check from an offset of the old log resets no further than the new log's end
    assert store.record_offsets("g", {("t", 1): (0, 900)}, {("t", 1): 900}) == {}
    assert store.record_offsets("g", {("t", 1): (900, 0)}, {("t", 1): 10}) == {}
    assert store.record_offsets("g", {("t", 1): (12, 0)}) == {("t", 1): 10}
    # without log ends (unknown) nothing is reset: a replay keeps the higher offset
    assert store.record_offsets("g", {a: (0, 20)}) == {}
    assert store.record_offsets("g", {a: (70, 0)}) == {a: 40}


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from shortlist.bundle.files import load_bundle, save_bundle
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=60, n_items=80, n_topics=4, likes_per_user=8, seed=9)
    model = SpectralCF(SpectralConfig(rank=16, ideal_rank=4))
    model.fit(data)
    return load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path_factory.mktemp("b")))


class AofRedis:
    """A redis-server of this test's own with appendonly (fsync every second)."""

    def __init__(self, root) -> None:
        self.dir, self.port = root, free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [shutil.which("redis-server"), "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--dir", str(self.dir), "--save", "", "--appendonly", "yes"]
        argv += ["--appendfsync", "everysec", "--aof-use-rdb-preamble", "no"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        wait_for(lambda: port_open("127.0.0.1", self.port), 10, "redis-server")
        wait_for(self._loaded, 10, "redis loaded")

    def _loaded(self) -> bool:
        try:
            return redis.Redis.from_url(self.url).ping()
        except redis.RedisError:
            return False

    def aof(self):
        """The incremental AOF file (Redis 7 multi-part AOF), the one writes go to."""
        (incr,) = (self.dir / "appendonlydir").glob("*.incr.aof")
        return incr

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.parametrize("log_made_again", [False, True])
def test_redis_restarted_from_an_aof_that_lost_its_tail_loses_no_event(
    small_bundle, broker, tmp_path, log_made_again
):
    """`log_made_again`: the store starts with offsets far past the topic's end, as after a
    broker that lost its log (tansu on memory storage restarted, a topic made again)."""
    server = AofRedis(tmp_path)
    server.start()
    settings = Settings.from_env(
        {},
        redis_url=server.url,
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=unique("aof"),
        feedback_group=unique("aof"),
    )
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, 2)
    publisher = KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic)
    store = RedisStateStore(server.url, "aof:", timeout_s=0.3)
    consumer = KafkaEventConsumer(
        settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
    )
    if log_made_again:
        old_log = {(settings.feedback_topic, p): (0, 5000) for p in range(2)}
        assert store.record_offsets(settings.feedback_group, old_log) == {}
    worker = FeedbackWorker(small_bundle, store, consumer, settings)
    users = [small_bundle.users.id(n) for n in range(12)]
    items = [small_bundle.items.id(n) for n in range(75)]
    sent: list[Event] = []

    def send(n: int) -> None:  # LIKEs of distinct (user, item) pairs, acknowledged
        batch = []
        for _ in range(n):
            k = len(sent) + len(batch)
            batch.append(Event(f"e{k}", users[k % 12], items[k // 12], Kind.LIKE, k))
        publisher.publish(batch, 10)
        sent.extend(batch)

    def applied() -> tuple[int, int]:
        """(distinct events in the users' seen sets, like counter total) in Redis."""
        client = redis.Redis.from_url(server.url)
        seen = sum(client.scard(store.user_key(u, "seen")) for u in users)
        likes = sum(int(client.get(store.user_key(u, "likes")) or 0) for u in users)
        return seen, likes

    worker.start()
    try:
        send(300)
        eventually(lambda: applied() == (300, 300), timeout_s=60)
        time.sleep(1.5)  # fsynced: what the AOF keeps after the crash
        kept = server.aof().stat().st_size
        send(300)  # applied, offsets recorded and committed to Kafka ...
        eventually(lambda: applied() == (600, 600) and worker.consumer.lag() == 0, 60)
        eventually(lambda: not worker._rewind and worker.batches > 0, 10)
        time.sleep(0.5)  # the Kafka commit of the last batch
        server.kill()  # ... then lost: Redis restarts from an AOF without its tail
        with open(server.aof(), "r+b") as aof:
            aof.truncate(kept)
        server.start()
        assert applied() == (300, 300)
        # no new record: the idle worker finds the gap (OFFSET_CHECK_S) and goes back
        eventually(lambda: applied() == (600, 600), timeout_s=60)
        assert worker.rewinds >= 1
        send(120)
        eventually(lambda: applied() == (720, 720), timeout_s=60)
        time.sleep(1)  # a late duplicate would show here
        assert applied() == (720, 720)  # every acknowledged event applied, none twice
    finally:
        worker.stop()
        publisher.close()
        if server.proc.poll() is None:
            server.kill()
