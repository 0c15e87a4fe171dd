"""Client-side load balancing (issue 28): the gateway's channel to an internal service
spreads calls round robin over every address its target resolves to, and routes around a
stopped one."""

from __future__ import annotations

import pytest

from shortlist.config import Settings
from shortlist.data.synthetic import generate
from shortlist.feedback.stores import InMemoryStateStore
from shortlist.services.launch import gateway_stages, start_service
from tests.conftest import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory):
    from shortlist.bundle.files import load_bundle, save_bundle
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=40, n_items=60, n_topics=3, likes_per_user=6, seed=4)
    model = SpectralCF(SpectralConfig(rank=8, ideal_rank=4))
    model.fit(data)
    return load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path_factory.mktemp("b")))


def test_calls_spread_over_two_retrieval_servers_and_route_around_a_stopped_one(small_bundle):
    settings = Settings.from_env({}, max_connection_age_ms=0)
    servers, calls = [], []
    for n in range(2):
        started = start_service(
            "retrieval", settings, small_bundle, "127.0.0.1:0", store=InMemoryStateStore()
        )
        calls.append(0)
        stage = started.servicer
        original = stage.retrieve

        def counted(*args, n=n, original=original, **kwargs):
            calls[n] += 1
            return original(*args, **kwargs)

        stage.retrieve = counted
        servers.append(started)
    # One target, two addresses (what a headless Service's DNS name resolves to).
    target = "ipv4:" + ",".join(f"127.0.0.1:{s.server.port}" for s in servers)
    retriever, _ = gateway_stages(settings, small_bundle, None, (), target, target)
    user = small_bundle.users.id(1)
    try:
        for _ in range(40):
            assert len(retriever.retrieve(user, 10, [], "", 5).messages) == 10
        assert calls[0] + calls[1] == 40
        assert min(calls) >= 15, calls  # round robin, not one pinned connection

        servers[1].stop()
        # the stopped server's connection goes away; every call then goes to the other
        eventually(lambda: retriever.retrieve(user, 10, [], "", 5).messages, timeout_s=10)
        before = calls[0]
        for _ in range(30):
            assert len(retriever.retrieve(user, 10, [], "", 5).messages) == 10
        assert calls[0] == before + 30
    finally:
        for s in servers:
            s.stop()
