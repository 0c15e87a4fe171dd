"""Fold-in quality: users never seen in training, folded in through the real feedback path.

A share of users is removed from training. Their training likes are then replayed as
`SendFeedback` calls to the gateway -> Kafka (tansu) -> feedback service -> Redis, their
vectors are read back from Redis, and their Recall@20/NDCG@20 on the test split is compared
with that of the users the model was trained on (same model, same protocol A).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import numpy as np
import scipy.sparse as sp

from shortlist.config import Settings
from shortlist.data.loaders import load_lightgcn_dir
from shortlist.evaluation.metrics import evaluate
from shortlist.feedback.bus import KafkaEventConsumer, KafkaEventPublisher, ensure_topic
from shortlist.feedback.stores import RedisStateStore
from shortlist.models import registry
from shortlist.models.progress import track
from shortlist.services.launch import start_service
from shortlist.tools.bench.feedback import delete_prefix
from shortlist.tools.stack import TansuBroker, wait_for
from shortlist.training.pipeline import retrieval_bundle
from shortlist.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc

NEW_USER = "new-{}"  # held-out users come back under ids the bundle has never seen


def _rows(m: sp.csr_matrix, rows: np.ndarray) -> sp.csr_matrix:
    return m.tocsr()[rows]


def run(
    data_dir: str,
    model: str = "spectral",
    options: dict[str, Any] | None = None,
    holdout_share: float = 0.1,
    seed: int = 0,
    redis_url: str = "redis://127.0.0.1:6379/0",
    progress=print,
) -> dict[str, Any]:
    split = load_lightgcn_dir(data_dir)
    train, test = split.train_valid(), split.test
    rng = np.random.default_rng(seed)
    eligible = np.flatnonzero(
        (np.diff(train.positives.indptr) > 0) & (np.diff(test.positives.indptr) > 0)
    )
    held = np.sort(rng.choice(eligible, int(len(eligible) * holdout_share), replace=False))
    trained = np.setdiff1d(eligible, held)
    keep = np.ones(train.n_users, np.float32)
    keep[held] = 0
    fit_data = train.with_positives((sp.diags(keep) @ train.positives).tocsr())
    fit_data.positives.eliminate_zeros()

    progress(f"training {model} without {len(held):,} held-out users")
    fitted = registry.build(model, options or {})
    start = time.perf_counter()
    fitted.fit(fit_data)
    train_s = time.perf_counter() - start
    bundle = retrieval_bundle(fit_data, fitted)

    likes = train.positives.tocsr()
    events = [
        common_pb2.FeedbackEvent(
            event_id=f"fold-{u}-{i}",
            user_id=NEW_USER.format(train.users.id(int(u))),
            item_id=train.items.id(int(i)),
            kind=common_pb2.FEEDBACK_KIND_LIKE,
        )
        for u in held
        for i in likes.indices[likes.indptr[u] : likes.indptr[u + 1]]
    ]
    broker = TansuBroker()
    broker.start()
    run_id = uuid.uuid4().hex[:8]
    settings = Settings(
        redis_url=redis_url,
        redis_prefix=f"slbench:{run_id}:fold:",
        kafka_bootstrap=broker.bootstrap,
        feedback_topic=f"bench-fold-{run_id}",
        feedback_group=f"bench-fold-{run_id}",
        feedback_batch=2000,
    )
    store = RedisStateStore(redis_url, settings.redis_prefix)
    ensure_topic(settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_partitions)
    feedback = start_service(
        "feedback",
        settings,
        bundle,
        "127.0.0.1:0",
        store,
        consumer=KafkaEventConsumer(
            settings.kafka_bootstrap, settings.feedback_topic, settings.feedback_group
        ),
    )
    gateway = start_service(
        "gateway",
        settings,
        bundle,
        "127.0.0.1:0",
        store,
        publisher=KafkaEventPublisher(settings.kafka_bootstrap, settings.feedback_topic),
        retrieval_target="127.0.0.1:1",
        ranking_target="127.0.0.1:1",
    )
    try:
        progress(f"replaying {len(events):,} likes through SendFeedback -> tansu -> Redis")
        start = time.perf_counter()
        with grpc.insecure_channel(f"127.0.0.1:{gateway.server.port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            for lo in track(range(0, len(events), settings.max_events), "likes replayed"):
                chunk = events[lo : lo + settings.max_events]
                stub.SendFeedback(gateway_pb2.SendFeedbackRequest(events=chunk), timeout=30)
        worker = feedback.worker
        wait_for(lambda: worker.applied >= len(events), 600, "all replayed likes applied", 0.2)
        replay_s = time.perf_counter() - start
        vectors = np.zeros((len(held), bundle.item_vectors.shape[1]), np.float32)
        missing = 0
        for row, u in track(enumerate(held), "folded-in vectors read", len(held), every=50):
            state = store.user_state(NEW_USER.format(train.users.id(int(u))), bundle.version)
            if state.vector is None:
                missing += 1
            else:
                vectors[row] = state.vector
    finally:
        gateway.stop()
        feedback.stop()
        broker.stop()
        delete_prefix(redis_url, settings.redis_prefix)

    items = fitted.item_factors
    folded = evaluate(vectors, items, _rows(likes, held), _rows(test.positives, held), ks=(20,))
    seen = evaluate(
        fitted.user_factors[trained],
        items,
        _rows(likes, trained),
        _rows(test.positives, trained),
        ks=(20,),
    )
    return {
        "bench": "foldin",
        "dataset": split.name,
        "model": model,
        "heldout_users": int(len(held)),
        "trained_users": int(len(trained)),
        "events": len(events),
        "users_without_vector": missing,
        "replay_seconds": round(replay_s, 2),
        "train_seconds": round(train_s, 2),
        "heldout_recall@20": round(folded["recall@20"], 4),
        "heldout_ndcg@20": round(folded["ndcg@20"], 4),
        "trained_recall@20": round(seen["recall@20"], 4),
        "trained_ndcg@20": round(seen["ndcg@20"], 4),
        "recall_ratio": round(folded["recall@20"] / seen["recall@20"], 4),
    }
