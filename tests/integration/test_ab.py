"""A/B routing over real gRPC sockets, Redis and the broker: two bundles served at once."""

from __future__ import annotations

import re
import urllib.request
from collections import Counter

import grpc
import numpy as np
import pytest

from shortlist.bundle.ab import ARM_A, ARM_B, arm_for, bucket
from shortlist.client import Client, Feedback, Recommendation
from shortlist.config import Settings
from shortlist.feedback.stores.base import RankingSignals, UserState
from shortlist.ranking.context import RequestContext
from shortlist.ranking.rank import rank
from shortlist.retrieval.retrieve import retrieve
from shortlist.rpc.server import client_channel
from shortlist.v1 import retrieval_pb2, retrieval_pb2_grpc
from tests.conftest import eventually


def test_arm_assignment_is_stable_and_follows_the_share():
    users = [f"u{i}" for i in range(20_000)]
    arms = [arm_for(u, 0.3, "exp1") for u in users]
    assert arms == [arm_for(u, 0.3, "exp1") for u in users]  # stable
    share_b = arms.count(ARM_B) / len(arms)
    assert 0.28 < share_b < 0.32, share_b
    assert {arm_for(u, 0.0, "exp1") for u in users[:500]} == {ARM_A}
    assert {arm_for(u, 1.0, "exp1") for u in users[:500]} == {ARM_B}
    # Growing the share only moves users from a to b, never back.
    assert all(arm_for(u, 0.5, "exp1") == ARM_B for u, a in zip(users, arms) if a == ARM_B)
    # Another salt reshuffles: about half of b stays b at share 0.5.
    moved = [bucket(u, "exp1") < 0.5 for u in users] != [bucket(u, "exp2") < 0.5 for u in users]
    assert moved


def test_ab_settings_from_environment():
    s = Settings.from_env({"SHORTLIST_AB_BUNDLE_B": "/b", "SHORTLIST_AB_SHARE_B": "0.25"})
    assert s.ab_bundle_b == "/b" and s.ab_share_b == 0.25
    with pytest.raises(ValueError, match="AB_SHARE_B"):
        Settings.from_env({"SHORTLIST_AB_SHARE_B": "1.5"})
    with pytest.raises(ValueError, match="must be a number"):
        Settings.from_env({"SHORTLIST_AB_SHARE_B": "half"})


@pytest.fixture(scope="module")
def client(ab_stack):
    with Client(ab_stack.gateway_target, timeout_s=10) as c:
        yield c


def recommend(client: Client, user: str, k: int = 10) -> Recommendation:
    return client.recommend(user, k)


def expected_items(bundle, user: str, k: int, candidates: int) -> list[str]:
    """What the arm's bundle alone gives a user without live state (retrieve, then rank)."""
    short = retrieve(bundle, user, UserState(), candidates)
    live = RankingSignals(history=[], live_likes=np.zeros(len(short.items), np.float32), likes=0)
    top, _ = rank(bundle, user, short.items, short.scores, live, RequestContext(), k)
    return bundle.items.ids(top)


def test_users_split_by_share_and_each_arm_serves_its_own_bundle(
    client, ab_settings, bundle, bundle_b
):
    assert bundle.version != bundle_b.version
    versions = {ARM_A: bundle.version, ARM_B: bundle_b.version}
    arms = {}
    for u in range(200):
        user = bundle.users.id(u)
        reply = recommend(client, user)
        assert reply.arm in (ARM_A, ARM_B)
        assert reply.arm == arm_for(user, 0.5, ab_settings.ab_salt)
        assert reply.model_version == versions[reply.arm], (user, reply.arm)
        assert not reply.fallback_used and len(reply.items) == 10
        arms[user] = reply.arm
    counts = Counter(arms.values())
    assert 70 <= counts[ARM_B] <= 130, counts  # about half of 200

    # The same user always lands in the same arm.
    for user in list(arms)[:30]:
        assert recommend(client, user).arm == arms[user]

    # Items come from the arm's bundle: exactly that bundle's retrieve-then-rank result.
    differ = 0
    for user in list(arms)[:40]:
        got = [i.item_id for i in recommend(client, user).items]
        mine = bundle if arms[user] == ARM_A else bundle_b
        other = bundle_b if arms[user] == ARM_A else bundle
        assert got == expected_items(mine, user, 10, ab_settings.candidates), user
        differ += got != expected_items(other, user, 10, ab_settings.candidates)
    assert differ >= 30  # the two models really disagree, so the check above means something


def test_unknown_users_get_their_arms_popularity(client, ab_settings, bundle, bundle_b):
    versions = {ARM_A: bundle.version, ARM_B: bundle_b.version}
    seen = set()
    for n in range(40):
        reply = recommend(client, f"never-seen-{n}", k=5)
        assert reply.fallback_reason == "unknown_user"
        assert reply.model_version == versions[reply.arm]
        seen.add(reply.arm)
    assert seen == {ARM_A, ARM_B}


def test_feedback_is_accepted_for_both_arms(client, ab_settings, bundle):
    users = [bundle.users.id(u) for u in range(250, 300)]
    by_arm = {arm_for(u, 0.5, ab_settings.ab_salt): u for u in users}
    for user in by_arm.values():
        item = recommend(client, user, k=3).items[0].item_id
        ack = client.send_feedback(Feedback(user, item, "like"))
        assert len(ack) == 1
        # Seen items leave the arm's next shortlist (live state is shared by both arms).
        eventually(lambda u=user, i=item: i not in recommend(client, u).item_ids)


def test_retrieval_refuses_a_version_it_does_not_serve(ab_stack, bundle):
    with client_channel(ab_stack.target("retrieval")) as channel:
        stub = retrieval_pb2_grpc.RetrievalStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.Retrieve(
                retrieval_pb2.RetrieveRequest(
                    user_id=bundle.users.id(0), n=10, model_version="no-such-version"
                ),
                timeout=5,
            )
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-version" in err.value.details()


def test_arm_label_in_metrics(client, ab_stack, bundle):
    for u in range(40):
        recommend(client, bundle.users.id(u))
    text = urllib.request.urlopen(f"http://{ab_stack.metrics_target}/metrics", timeout=5).read()
    text = text.decode()

    def series(name: str, **labels: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if not line.startswith(name + "{"):
                continue
            got = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            if all(got.get(k) == v for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    for arm in (ARM_A, ARM_B):
        rpc = "shortlist_rpc_requests_total"
        assert series(rpc, service="gateway", method="Recommend", code="OK", arm=arm) > 0
        # Retrieval and ranking served this arm's bundle (they label by the bundle served).
        assert series(rpc, service="retrieval", method="Retrieve", arm=arm) > 0
        assert series(rpc, service="ranking", method="Rank", arm=arm) > 0
        stage = "shortlist_stage_latency_seconds_count"
        for service, name in (("gateway", "ranking"), ("retrieval", "ann"), ("ranking", "scoring")):
            assert series(stage, service=service, stage=name, arm=arm) > 0, (service, arm)
        assert series("shortlist_fallbacks_total", reason="unknown_user", arm=arm) >= 0
    assert 'shortlist_feedback_events_published_total{arm="' in text
