"""Stage faults and bundle hot swap on the real stack (in-process services over real Redis
and the tansu broker): a stopped or stalled retrieval/ranking stage never fails a request
nor holds it past its deadline, and a bundle published under load is switched to without
a failed request."""

from __future__ import annotations

import dataclasses
import shutil
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from shortlist.bundle.files import load_bundle, save_bundle
from shortlist.bundle.promotion import latest_version
from shortlist.bundle.watcher import BundleWatcher
from shortlist.client import Client, Feedback
from shortlist.feedback.bus import KafkaEventPublisher
from shortlist.feedback.stores import RedisStateStore
from shortlist.rpc.server import client_channel
from shortlist.services.launch import start_service
from shortlist.v1 import common_pb2
from tests.conftest import eventually, start_stack, unique

pytestmark = pytest.mark.integration


@pytest.fixture
def make_stack(settings, bundle):
    """Start stacks of this test's own (stages can be stopped); all stopped afterwards."""
    stacks = []

    def make(**overrides):
        s = settings.replace(
            feedback_topic=unique("stages"), feedback_group=unique("stages"), **overrides
        )
        stack = start_stack(s, bundle, partitions=1)
        stacks.append(stack)
        return stack, s

    yield make
    for stack in stacks:
        stack.stop()


def timed(call: Callable[[], Any]) -> tuple[Any, grpc.RpcError | None, float]:
    """`call()`'s (reply, error, seconds)."""
    start = time.perf_counter()
    try:
        reply = call()
        return reply, None, time.perf_counter() - start
    except grpc.RpcError as exc:
        return None, exc, time.perf_counter() - start


def one_attempt(target: str, timeout_s: float = 2.0) -> Client:
    """A client that tries each call once: a retry would hide a failed call."""
    return Client(target, timeout_s=timeout_s, max_attempts=1)


def load(client: Client, bundle, seconds: float, threads: int = 6, timeout: float = 2.0):
    """Recommend calls from `threads` clients for `seconds`: (reply, error, latency)s."""
    return [r for rs in load_per_thread(client, bundle, seconds, threads, timeout) for r in rs]


def load_per_thread(
    client: Client, bundle, seconds: float, threads: int = 6, timeout: float = 2.0, until=None
):
    """Recommend calls from `threads` clients for `seconds`, or until `until()` is true."""
    stop = time.monotonic() + seconds

    def caller(n: int):
        out = []
        i = 0
        while time.monotonic() < stop and not (until is not None and until()):
            user = bundle.users.id((n * 37 + i) % len(bundle.users))
            out.append(timed(lambda u=user: client.recommend(u, 10, timeout_s=timeout)))
            i += 1
        return out

    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(caller, range(threads)))


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_stopped_stage_under_load_fails_no_request(make_stack, bundle, stage):
    stack, settings = make_stack(retrieval_timeout_ms=300, ranking_timeout_ms=300)
    with one_attempt(stack.gateway_target) as client:
        stopper = threading.Timer(1.0, lambda: stack.services.pop(stage).server.stop(0.5))
        stopper.start()
        results = load(client, bundle, 3.0)
        stopper.join()
        errors = [e for _, e, _ in results if e is not None]
        assert not errors, f"{len(errors)} failed calls, first: {errors[0]}"
        slowest = max(t for _, _, t in results)
        assert slowest < 2.0, f"a call took {slowest:.2f}s"
        reasons = {r.fallback_reason for r, _, _ in results}
        after = client.recommend(bundle.users.id(2), 10)
        assert after.fallback_used and len(after.items) == 10
        assert after.fallback_reason.startswith(f"{stage}_unavailable:")
        assert "" in reasons and after.fallback_reason in reasons
        if stage == "retrieval":  # popularity order
            assert [i.item_id for i in after.items] == bundle.items.ids(
                bundle.popular_items(10, bundle.items.indices([]))
            )
            with pytest.raises(grpc.RpcError) as err:
                client.similar_items("x", 3)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE and err.value.details()


def test_stage_comes_back_on_the_same_port(make_stack, bundle, settings):
    stack, s = make_stack(retrieval_timeout_ms=300, ranking_timeout_ms=300)
    port = stack.services["ranking"].server.port
    stack.services.pop("ranking").server.stop(0)
    user = bundle.users.id(4)
    with one_attempt(stack.gateway_target) as client:
        assert client.recommend(user, 5).fallback_reason.startswith("ranking_unavail")
        stack.services["ranking"] = start_service(
            "ranking",
            s,
            bundle,
            f"127.0.0.1:{port}",
            RedisStateStore(s.redis_url, s.redis_prefix),
        )
        eventually(lambda: not client.recommend(user, 5).fallback_used, 30, 0.2)


@pytest.fixture
def black_hole():
    """A TCP port that accepts connections and never answers (a hung process)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    accepted = []
    stop = threading.Event()

    def accept():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(2)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.parametrize("stage", ["retrieval", "ranking"])
def test_stalled_stage_is_cut_off_at_its_budget(make_stack, bundle, settings, black_hole, stage):
    stack, s = make_stack(retrieval_timeout_ms=250, ranking_timeout_ms=250)
    stack.services.pop("gateway").stop()
    targets = {
        "retrieval_target": stack.target("retrieval"),
        "ranking_target": stack.target("ranking"),
    }
    targets[f"{stage}_target"] = black_hole
    stack.services["gateway"] = start_service(
        "gateway",
        s,
        bundle,
        "127.0.0.1:0",
        publisher=KafkaEventPublisher(s.kafka_bootstrap, s.feedback_topic),
        **targets,
    )
    user = bundle.users.id(6)
    with one_attempt(stack.gateway_target, 5.0) as client:
        for _ in range(3):
            reply, err, took = timed(lambda: client.recommend(user, 5))
            assert err is None and reply.fallback_reason.startswith(f"{stage}_unavailable:")
            assert took < 0.25 + 0.3 + (0.25 if stage == "ranking" else 0), took
            assert len(reply.items) == 5
        # A caller deadline shorter than the stage budget bounds the whole call.
        reply, err, took = timed(lambda: client.recommend(user, 5, timeout_s=0.12))
        assert took < 0.12 + 0.2, took
        assert err is None or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_bundle_published_under_load_is_switched_without_failed_requests(
    make_stack, bundle, bundle_dir, tmp_path
):
    root = tmp_path / "artifacts"
    shutil.copytree(bundle_dir, root)
    stack, s = make_stack()
    watcher = BundleWatcher(root, bundle.version, stack.swap_bundle, poll_s=0.1).start()
    new_version = bundle.version + "-next"
    sent_feedback = []

    def publish():
        time.sleep(1.0)
        save_bundle(dataclasses.replace(bundle, version=new_version), root)

    try:
        with one_attempt(stack.gateway_target) as client:
            publisher = threading.Thread(target=publish)
            publisher.start()

            def feedback():
                stop = time.monotonic() + 4.0
                i = 0
                while time.monotonic() < stop:
                    event = Feedback(
                        bundle.users.id(i % 50), bundle.items.id(i % len(bundle.items)), "like"
                    )
                    sent_feedback.append(
                        timed(lambda e=event: client.send_feedback(e, timeout_s=5))
                    )
                    i += 1
                    item = bundle.items.id(i % 50)
                    sent_feedback.append(timed(lambda it=item: client.similar_items(it, 5)))

            side = threading.Thread(target=feedback)
            side.start()
            # The swap compiles the new ranker under load (seconds on 2 cores): load until
            # a second after it, at most 30 s.
            swapped: list[float] = []

            def a_second_after_the_swap() -> bool:
                if watcher.swaps and not swapped:
                    swapped.append(time.monotonic())
                return bool(swapped) and time.monotonic() > swapped[0] + 1.0

            per_thread = load_per_thread(
                client, bundle, 30.0, threads=4, until=a_second_after_the_swap
            )
            results = [r for rs in per_thread for r in rs]
            side.join()
            publisher.join()
    finally:
        watcher.stop()
    errors = [e for _, e, _ in results + sent_feedback if e is not None]
    assert not errors, f"{len(errors)} failed calls, first: {errors[0]}"
    for calls in per_thread:  # each client sees the old version, then only the new one
        versions = [r.model_version for r, _, _ in calls]
        assert bundle.version in versions and new_version in versions
        switched = versions.index(new_version)
        # One call may already have been past retrieval when the swap landed.
        assert versions[switched + 2 :].count(bundle.version) == 0
    assert not [r for r, _, _ in results if r.fallback_reason.endswith("unavailable")]
    assert watcher.swaps == 1 and latest_version(root) == new_version
    assert stack.services["feedback"].worker.bundle.version == new_version


def test_watcher_keeps_serving_when_a_bundle_fails_to_load(bundle, bundle_dir, tmp_path):
    root = tmp_path / "artifacts"
    shutil.copytree(bundle_dir, root)
    swapped = []
    watcher = BundleWatcher(root, bundle.version, swapped.append, poll_s=0)
    (root / "LATEST").write_text("v-missing\n")
    assert not watcher.check() and watcher.failures == 1 and watcher.version == bundle.version
    (root / "LATEST").write_text(bundle.version + "\n")
    assert not watcher.check()  # unchanged
    save_bundle(dataclasses.replace(load_bundle(root), version="v-2"), root)
    watcher.start()
    watcher.request_reload()  # what SIGHUP does
    eventually(lambda: swapped, 10)
    watcher.stop()
    assert swapped[0].version == "v-2"


def test_service_process_reloads_on_sighup(settings, bundle, bundle_dir, tmp_path):
    """`shortlist serve` as its own process: a bundle published under the root it serves is
    picked up on SIGHUP (polling turned off here, so the signal is what triggers it)."""
    import os
    import signal
    import subprocess
    import sys

    from shortlist.tools.stack import free_port, grpc_serving

    root = tmp_path / "artifacts"
    shutil.copytree(bundle_dir, root)
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        **settings.to_env(),
        "SHORTLIST_BUNDLE": str(root),
        "SHORTLIST_RETRIEVAL_ADDR": address,
        "SHORTLIST_RETRIEVAL_METRICS_PORT": str(free_port()),
        "SHORTLIST_BUNDLE_POLL_MS": "0",
    }
    argv = [sys.executable, "-m", "shortlist.services", "retrieval"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    request = common_pb2.SimilarItemsRequest(item_id=bundle.items.id(3), k=3)
    try:
        eventually(lambda: grpc_serving(address), 90, 0.3)
        with client_channel(address) as channel:
            from shortlist.v1 import retrieval_pb2_grpc

            stub = retrieval_pb2_grpc.RetrievalStub(channel)
            assert stub.SimilarItems(request, timeout=5).model_version == bundle.version
            save_bundle(dataclasses.replace(bundle, version=bundle.version + "-hup"), root)
            time.sleep(0.5)
            assert stub.SimilarItems(request, timeout=5).model_version == bundle.version
            proc.send_signal(signal.SIGHUP)
            eventually(
                lambda: stub.SimilarItems(request, timeout=5).model_version.endswith("-hup"), 30
            )
    finally:
        proc.terminate()
        proc.wait(15)


def test_services_that_never_search_load_and_hot_swap_bundles_without_the_index(
    bundle, bundle_dir, tmp_path, settings
):
    from shortlist.services.launch import searches, watch_bundle

    assert searches("retrieval", settings)
    assert not searches("ranking", settings) and not searches("feedback", settings)
    assert searches("gateway", settings.replace(colocate=True))
    assert not searches("gateway", settings.replace(colocate=False))
    lean = load_bundle(bundle_dir, with_index=False)
    assert lean.index is None and bundle.index is not None
    assert lean.version == bundle.version
    assert (lean.item_vectors == bundle.item_vectors).all()
    assert lean.scorer is not None  # what ranking needs is all there

    root = tmp_path / "artifacts"
    shutil.copytree(bundle_dir, root)
    swapped = []
    watcher = watch_bundle(settings.replace(bundle=str(root)), bundle, swapped.append, False)
    assert watcher is not None
    save_bundle(dataclasses.replace(bundle, version="v-lean"), root)
    watcher.request_reload()
    eventually(lambda: swapped, 10)
    watcher.stop()
    assert swapped[0].version == "v-lean" and swapped[0].index is None
