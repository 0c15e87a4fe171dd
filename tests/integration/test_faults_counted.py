"""Faults with a count (issue 27): events stream into the feedback worker while a fault hits
a Redis of the test's own (shortlist.tools.faults.OwnRedis: AOF, maxmemory, noeviction) or
the broker; afterwards every acknowledged event is in Redis once. Each test prints its
count: acknowledged, applied, applied twice (like counters above the likes marked)."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import redis

from shortlist.config import Settings
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.bus.base import BusUnavailable
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore
from shortlist.feedback.worker import FeedbackWorker
from shortlist.tools.faults import OwnRedis, acknowledged_audit, mark_ids
from shortlist.tools.stack import TansuBroker
from tests.conftest import eventually, start_stack, unique

pytestmark = pytest.mark.integration

PREFIX = "faults:"


class Stream:
    """LIKE events published in batches of `batch` every `every_s` from a thread; remembers
    each as (user, event id, kind, acknowledged by the broker)."""

    def __init__(self, publisher, users: list[str], items: list[str], batch: int = 10):
        self.publisher, self.users, self.items, self.batch = publisher, users, items, batch
        self.sent: list[tuple[str, str, str, bool]] = []
        self.refused = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        n = 0
        while not self._stop.is_set():
            events = []
            for _ in range(self.batch):
                user, item = self.users[n % len(self.users)], self.items[n % len(self.items)]
                events.append(Event(f"s{n}", user, item, Kind.LIKE, 1_700_000_000_000 + n))
                n += 1
            try:
                self.publisher.publish(events, timeout_s=2.0)
                acked = True
            except BusUnavailable:
                acked = False
                self.refused += len(events)
            self.sent += [(e.user_id, e.event_id, "like", acked) for e in events]
            self._stop.wait(0.02)

    def start(self) -> Stream:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def acknowledged(self) -> int:
        return sum(s[3] for s in self.sent)


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    """What the worker needs (fold-in data) and no ranker: seconds to build."""
    from shortlist.bundle.files import load_bundle, save_bundle
    from shortlist.data.synthetic import generate
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=60, n_items=160, n_topics=4, likes_per_user=8, seed=9)
    model = SpectralCF(SpectralConfig(rank=16, ideal_rank=4))
    model.fit(data)
    return load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path_factory.mktemp("b")))


def worker_on(bundle, redis_url: str, bootstrap: str, topic: str, group: str) -> FeedbackWorker:
    settings = Settings.from_env(
        {},
        redis_url=redis_url,
        kafka_bootstrap=bootstrap,
        feedback_topic=topic,
        feedback_group=group,
        feedback_batch=50,
    )
    store = RedisStateStore(redis_url, PREFIX, timeout_s=0.3)
    return FeedbackWorker(bundle, store, KafkaEventConsumer(bootstrap, topic, group), settings)


def audit(server: OwnRedis, stream: Stream) -> dict:
    return acknowledged_audit(redis.Redis.from_url(server.url), PREFIX, stream.sent)


def settle(server: OwnRedis, stream: Stream, what: str) -> dict:
    """Once every acknowledged event is applied (or 90 s), and a second more for a late
    replay to show: the audit, printed."""
    eventually(lambda: not audit(server, stream)["missing"], 90, 0.5)
    time.sleep(1.0)
    found = audit(server, stream)
    print(
        f"{what}: acknowledged {found['acknowledged']}, applied {found['applied']}, "
        f"refused {stream.refused}, applied twice {found['applied_twice']}"
    )
    return found


def marks(server: OwnRedis) -> int:
    client = redis.Redis.from_url(server.url)
    return sum(1 for _ in client.scan_iter(f"{PREFIX}{{u:*}}:ev:*", count=1000))


class Streaming:
    """A topic and group of their own, a worker over `redis` and a Stream publishing likes
    to the topic (`publisher_options` go to its producer); started mid-stream: the worker
    has applied 100 events when the constructor returns. `stop` stops all of it."""

    def __init__(
        self, bundle, redis: OwnRedis, bootstrap: str, partitions: int, **publisher_options
    ):
        self.bundle, self.redis, self.bootstrap = bundle, redis, bootstrap
        self.topic, self.group = unique("counted"), unique("counted")
        ensure_topic(bootstrap, self.topic, partitions)
        self.publisher = KafkaEventPublisher(bootstrap, self.topic, **publisher_options)
        users = [bundle.users.id(n) for n in range(20)]
        self.stream = Stream(self.publisher, users, [bundle.items.id(n) for n in range(150)])
        self.workers: list[FeedbackWorker] = []
        try:
            self.another_worker()
            self.stream.start()
            eventually(lambda: marks(redis) >= 100, 60, 0.1)  # mid-stream from here on
        except BaseException:
            self.stop()
            raise

    def another_worker(self) -> FeedbackWorker:
        w = worker_on(self.bundle, self.redis.url, self.bootstrap, self.topic, self.group)
        self.workers.append(w)
        w.start()
        return w

    def stop(self) -> None:
        self.stream.stop()
        for w in self.workers:
            w.stop()
        self.publisher.close()


@pytest.fixture
def streaming(small_bundle, broker, own_redis):
    """A worker over `own_redis` and a stream publishing to it, both stopped afterwards."""
    running = Streaming(small_bundle, own_redis, broker.bootstrap, partitions=2)
    yield running.stream, running.workers, running.another_worker
    running.stop()


def test_redis_killed_mid_stream_and_restarted_from_its_aof(streaming, own_redis):
    stream, workers, _ = streaming
    own_redis.kill9()  # the last second of writes may be lost with the AOF tail
    time.sleep(0.5)
    own_redis.start()
    time.sleep(1.5)
    stream.stop()
    found = settle(own_redis, stream, "redis kill -9 + AOF restart")
    assert found["acknowledged"] >= 200 and stream.refused == 0
    assert found["missing"] == [] and found["applied"] == found["acknowledged"]
    assert found["applied_twice"] == 0 and found["likes_counted"] == found["likes_marked"]


def test_redis_at_maxmemory_refuses_writes_and_the_consumer_commits_nothing_past_them(
    streaming, own_redis
):
    """noeviction: at its limit Redis refuses every write with OOM. The worker holds its
    batch and commits nothing past it; a worker stopped then (as a pod would be) leaves
    its events to the next, which applies them once memory is back."""
    stream, workers, another_worker = streaming
    limit = own_redis.squeeze()
    time.sleep(0.5)  # a write in flight when the limit came lands or is refused
    frozen = marks(own_redis)
    time.sleep(4.0)  # longer than a poison record's retries (4 tries, 0.1 s backoff doubling)
    assert marks(own_redis) == frozen  # nothing was written while at the limit
    # Redis refusing writes is the store being away, not a poison record: nothing parked.
    assert workers[0].poisoned == 0 and workers[0].parked == 0
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        own_redis.client().set(f"{PREFIX}probe", 1)
    workers[0].stop()  # mid-fault: its held batch must not be committed
    own_redis.set_maxmemory(limit)
    another_worker()
    time.sleep(1.0)
    stream.stop()
    found = settle(own_redis, stream, "redis at maxmemory (noeviction)")
    assert found["applied"] > frozen
    assert found["missing"] == [] and found["applied"] == found["acknowledged"]
    assert found["applied_twice"] == 0


def test_redis_slowed_by_debug_sleep(streaming, own_redis):
    """The worker's store calls time out (0.3 s) while Redis sleeps 2 s; the scripts it sent
    run when Redis wakes, and the retries of them must be no-ops (dedup marks)."""
    stream, workers, _ = streaming
    started = time.monotonic()
    own_redis.debug_sleep(2)
    assert time.monotonic() - started >= 1.9
    time.sleep(1.0)
    stream.stop()
    found = settle(own_redis, stream, "redis DEBUG SLEEP 2")
    assert found["missing"] == [] and found["applied"] == found["acknowledged"]
    assert found["applied_twice"] == 0


def test_broker_restarted_mid_produce(small_bundle, own_redis):
    """tansu here keeps its log in memory, so a restart empties it: what the test can hold,
    and holds, is that events refused while it is away are never acknowledged, nothing is
    applied twice, every event acknowledged after the restart is applied, and every event
    acknowledged before the stop is applied, except those the worker had not consumed yet
    when the log vanished; those are counted (printed) and bounded by the events
    acknowledged in the last seconds before the stop. With a broker that keeps its log
    (Apache Kafka: replicated, on disk) none would be lost; tansu's durable storages
    (postgres, S3) are not built into the binary here."""
    broker = TansuBroker()
    broker.start()
    try:
        running = Streaming(small_bundle, own_redis, broker.bootstrap, 1, max_block_s=1.0)
    except BaseException:
        broker.stop()
        raise
    stream = running.stream
    try:
        broker.stop()  # mid-produce
        stopped_at = len(stream.sent)
        applied_at_stop = set(mark_ids(redis.Redis.from_url(own_redis.url), PREFIX))
        time.sleep(3.5)  # longer than a publish waits (2 s): sends during it are refused
        broker.start()
        ensure_topic(broker.bootstrap, running.topic, 1)
        eventually(lambda: any(s[3] for s in stream.sent[stopped_at + 30 :]), 60, 0.2)
        time.sleep(1.5)
        stream.stop()
        before, after = stream.sent[:stopped_at], stream.sent[stopped_at:]
        after_acked = [s for s in after if s[3]]
        eventually(
            lambda: (
                not acknowledged_audit(redis.Redis.from_url(own_redis.url), PREFIX, after_acked)[
                    "missing"
                ]
            ),
            90,
            0.5,
        )
        time.sleep(1.0)
        found = audit(own_redis, stream)
    finally:
        running.stop()
        broker.stop()
    missing = set(found["missing"])
    lost = [s for s in before if s[3] and s[1] in missing]
    acked_before = sum(s[3] for s in before)
    print(
        f"broker restart mid-produce: acknowledged {found['acknowledged']} "
        f"({acked_before} before the stop, {len(after_acked)} after), applied "
        f"{found['applied']}, lost with the memory log {len(lost)}, refused "
        f"{stream.refused}, applied twice {found['applied_twice']}"
    )
    assert stream.refused > 0  # the stop was mid-produce: some sends were refused
    assert after_acked and not missing & {s[1] for s in after_acked}
    assert found["applied_twice"] == 0
    # What is lost is only what had not been applied when the log vanished.
    assert not {s[1] for s in lost} & applied_at_stop
    assert found["applied"] + len(lost) == found["acknowledged"]


@pytest.fixture(scope="module")
def small_bundle_dir(small_bundle, tmp_path_factory):
    from shortlist.bundle.files import save_bundle

    return save_bundle(small_bundle, tmp_path_factory.mktemp("swaps")).parent


def test_twenty_hot_swaps_in_a_row_hold_two_bundles_and_free_the_rest(
    small_bundle_dir, redis_url, redis_prefix
):
    """Memory flat over 20 swaps, checked by what is alive rather than by RSS (which the
    allocator blurs): after each swap the co-located stages hold the new bundle and the one
    before (in-flight requests), and every older one has been freed."""
    import dataclasses
    import gc
    import weakref

    import psutil

    from shortlist.bundle.files import load_bundle
    from shortlist.ranking.context import RequestContext
    from shortlist.services.local import LocalRanker, LocalRetriever

    settings = Settings.from_env({}, redis_url=redis_url, redis_prefix=redis_prefix)
    store = RedisStateStore(redis_url, redis_prefix)
    first = load_bundle(small_bundle_dir)
    small_version = first.version
    retriever = LocalRetriever(first, store, settings)
    ranker = LocalRanker(first, store, settings)
    refs = [weakref.ref(first)]
    del first
    user = retriever.bundle.users.id(0)
    rss = []
    for n in range(20):
        new = dataclasses.replace(load_bundle(small_bundle_dir), version=f"swap-{n}")
        refs.append(weakref.ref(new))
        retriever.use_bundle(new)
        ranker.use_bundle(new)
        del new
        candidates = retriever.retrieve(user, 50, [], "", None)
        ranker.rank(user, candidates, RequestContext(), {}, 10, None)
        gc.collect()
        alive = {b.version for b in (r() for r in refs) if b is not None}
        assert alive <= {f"swap-{n - 1}", f"swap-{n}", small_version} and len(alive) <= 2, alive
        del alive
        rss.append(psutil.Process().memory_info().rss / 2**20)
    assert retriever.bundle.version == "swap-19" and len(retriever.bundles.by_version) == 2
    print(f"20 hot swaps: RSS {rss[0]:.0f} -> {rss[-1]:.0f} MiB, 2 bundles alive")


def test_tampered_bundle_under_load_is_refused_and_the_old_one_keeps_serving(
    settings, small_bundle, small_bundle_dir, tmp_path
):
    bundle, bundle_dir = small_bundle, small_bundle_dir
    import dataclasses
    import shutil

    from shortlist.bundle.files import save_bundle
    from shortlist.bundle.promotion import promote
    from shortlist.bundle.watcher import BundleWatcher
    from shortlist.client import Client

    root = tmp_path / "artifacts"
    shutil.copytree(bundle_dir, root)
    s = settings.replace(feedback_topic=unique("tamper"), feedback_group=unique("tamper"))
    stack = start_stack(s, bundle, partitions=1)
    watcher = BundleWatcher(root, bundle.version, stack.swap_bundle, poll_s=0.1).start()
    tampered = bundle.version + "-tampered"
    calls: list[tuple[str, str | None]] = []  # (version served, error)
    stop = threading.Event()

    def caller(n: int) -> None:
        # one attempt per call: a retry would hide a failed call
        with Client(stack.gateway_target, timeout_s=5, max_attempts=1) as client:
            i = 0
            while not stop.is_set():
                user = bundle.users.id((n * 7 + i) % len(bundle.users))
                i += 1
                try:
                    calls.append((client.recommend(user, 5).model_version, None))
                except grpc.RpcError as exc:
                    calls.append(("", exc.code().name))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(3)]
    try:
        for t in threads:
            t.start()
        time.sleep(0.5)
        path = save_bundle(dataclasses.replace(bundle, version=tampered), root, promote_it=False)
        with open(path / "item_vectors.npy", "ab") as f:
            f.write(b"\0")  # the file no longer matches the manifest's sha256
        promote(root, tampered, "test: a tampered bundle")
        eventually(lambda: watcher.failures >= 3, 30, 0.1)  # refused at every poll
        during = len(calls)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        watcher.stop()
        stack.stop()
    errors = [c for c in calls if c[1] is not None]
    print(
        f"tampered bundle: {watcher.failures} refusals, {len(calls)} calls, "
        f"{len(errors)} failed, served {sorted({c[0] for c in calls})}"
    )
    assert not errors and during > 0 and len(calls) > during
    assert {c[0] for c in calls} == {bundle.version}
    assert watcher.version == bundle.version and watcher.swaps == 0


def test_certificate_rotated_under_load(tmp_path):
    """Clients call Check back to back (half of them on a new connection each time, so new
    handshakes happen during the rotation) while the certificate and its key are replaced,
    one file after the other as a Secret volume update does: no call fails, and new
    handshakes present the new certificate afterwards. The clients trust both CAs, as they
    do during a real CA rotation."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from tests.pki import presented_serial, replace, rotating_server

    r = rotating_server(tmp_path)
    old_cert, new_cert, server = r.old_cert, r.new_cert, r.server
    creds = grpc.ssl_channel_credentials(r.old_ca.pem() + r.new_ca.pem())
    target = f"localhost:{server.port}"
    calls: list[tuple[float, str | None]] = []
    stop = threading.Event()

    def client(fresh: bool) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]
        kept = grpc.secure_channel(target, creds, options=options)
        while not stop.is_set():
            channel = grpc.secure_channel(target, creds, options=options) if fresh else kept
            try:
                status = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=5
                )
                ok = status.status == health_pb2.HealthCheckResponse.SERVING
                calls.append((time.monotonic(), None if ok else "NOT_SERVING"))
            except grpc.RpcError as exc:
                calls.append((time.monotonic(), exc.code().name))
            finally:
                if fresh:
                    channel.close()
        kept.close()

    threads = [threading.Thread(target=client, args=(n % 2 == 0,)) for n in range(4)]
    try:
        assert presented_serial(server.port) == old_cert.serial_number
        for t in threads:
            t.start()
        time.sleep(1.0)
        rotated_from = time.monotonic()
        replace(r.cert_file, r.new_pem)  # half-way: the new certificate, the old key
        time.sleep(0.5)
        replace(r.key_file, r.new_key)
        rotated_to = time.monotonic()
        eventually(lambda: presented_serial(server.port) == new_cert.serial_number, 10, 0.1)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        server.stop(0)
    errors = [c for c in calls if c[1] is not None]
    during = [c for c in calls if rotated_from <= c[0] <= rotated_to]
    print(
        f"certificate rotated under load: {len(calls)} calls, {len(during)} during, "
        f"{len(errors)} failed"
    )
    assert not errors, errors[:5]
    assert during and calls[-1][0] > rotated_to
