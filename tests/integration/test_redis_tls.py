"""Redis over TLS as deploy/k8s runs it: a redis-server of this test's own with TLS only
(`--port 0 --tls-port`), client certificates required (`--tls-auth-clients yes`) and the
k8s ACL user; certificates made here. The store and the feedback worker apply events over
it; a plaintext client, a client without a certificate and one from another CA are
refused. The same for a three-master Redis Cluster with TLS on the cluster bus too."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest
import redis
from cryptography.hazmat.primitives.asymmetric import ec

from shortlist.config import Settings
from shortlist.feedback.bus import InMemoryBus
from shortlist.feedback.events import Event, Kind
from shortlist.feedback.stores import RedisStateStore, RedisTLS, StoreUnavailable, redis_client
from shortlist.feedback.worker import FeedbackWorker
from shortlist.tools.redis_cluster import LocalRedisCluster
from shortlist.tools.stack import free_port, port_open, wait_for
from tests.pki import issue, write_pem

pytestmark = pytest.mark.integration
PASSWORD = "redis-tls-test-password"


@pytest.fixture(scope="module")
def redis_pki(tmp_path_factory):
    """A CA, Redis's server certificate (localhost, 127.0.0.1), a client certificate, and a
    client certificate from an unrelated CA."""
    root = tmp_path_factory.mktemp("redis-pki")

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("shortlist redis CA", ca_key, None, ca_key, [], ca=True)
    write_pem(root, "ca", ca)
    for name, dns in (("server", ["localhost", "redis"]), ("client", ["feedback"])):
        key = ec.generate_private_key(ec.SECP256R1())
        write_pem(root, name, issue(name, ca_key, ca, key, dns, ["127.0.0.1"]), key)
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = issue("other CA", other_key, None, other_key, [], ca=True)
    write_pem(root, "other-ca", other)
    key = ec.generate_private_key(ec.SECP256R1())
    write_pem(root, "stranger", issue("stranger", other_key, other, key, ["feedback"]), key)
    return root


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small retrieval bundle (the worker's fold-in needs its item vectors)."""
    from shortlist.bundle.files import load_bundle, save_bundle
    from shortlist.data.synthetic import generate
    from shortlist.models.spectral import SpectralCF, SpectralConfig
    from shortlist.training.pipeline import retrieval_bundle

    data = generate(n_users=40, n_items=60, n_topics=4, likes_per_user=8, seed=11)
    model = SpectralCF(SpectralConfig(rank=8, ideal_rank=4))
    model.fit(data)
    return load_bundle(save_bundle(retrieval_bundle(data, model), tmp_path_factory.mktemp("b")))


@pytest.fixture(scope="module")
def tls_redis(redis_pki, tmp_path_factory):
    """redis-server with TLS only, as deploy/k8s/base/redis.yaml starts it; yields its port."""
    port, pki = free_port(), redis_pki
    argv = [shutil.which("redis-server"), "--port", "0", "--tls-port", str(port)]
    argv += ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(tmp_path_factory.mktemp("redis-tls"))]
    argv += ["--tls-cert-file", str(pki / "server.crt"), "--tls-key-file", str(pki / "server.key")]
    argv += ["--tls-ca-cert-file", str(pki / "ca.crt"), "--tls-auth-clients", "yes"]
    argv += ["--user", "default", "off"]
    argv += ["--user", "shortlist", "on", f">{PASSWORD}", "~sl:*", "&*", "+@all", "-@admin"]
    argv += ["-@dangerous"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), 15, "redis-server with TLS")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def tls_of(pki, client: str | None = "client") -> RedisTLS:
    if client is None:
        return RedisTLS(ca_file=str(pki / "ca.crt"))
    return RedisTLS(str(pki / "ca.crt"), str(pki / f"{client}.crt"), str(pki / f"{client}.key"))


def url(port: int, scheme: str = "rediss") -> str:
    return f"{scheme}://shortlist:{PASSWORD}@localhost:{port}/0"


def test_the_store_and_the_worker_apply_events_over_tls(tls_redis, redis_pki, bundle):
    settings = Settings(
        redis_url=url(tls_redis),
        redis_ca_file=str(redis_pki / "ca.crt"),
        redis_cert_file=str(redis_pki / "client.crt"),
        redis_key_file=str(redis_pki / "client.key"),
    )
    from shortlist.services.launch import redis_store

    store = redis_store(settings)  # what every service builds from its settings
    store.ping()
    bus = InMemoryBus()
    worker = FeedbackWorker(bundle, store, bus.consumer(), settings)
    user = bundle.users.id(4)
    items = [bundle.items.id(i) for i in range(6)]
    events = [
        Event(f"tls-{n}", user, item, Kind.LIKE if n % 2 else Kind.DISLIKE, 1_700_000_000_000 + n)
        for n, item in enumerate(items)
    ]
    bus.publisher().publish(events, timeout_s=1)
    deadline = time.monotonic() + 30
    while worker.applied < len(events):
        assert time.monotonic() < deadline, worker.applied
        worker.run_once(timeout_ms=100)
    state = store.user_state(user, bundle.version)
    assert state.seen == set(items)
    assert state.disliked == set(items[0::2])
    assert state.likes == 3
    store.close()


def test_plaintext_and_uncertified_clients_are_refused(tls_redis, redis_pki):
    # plaintext on the TLS port: the server drops the connection
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(url(tls_redis, "redis"), socket_timeout=3).ping()
    plain = RedisStateStore(url(tls_redis, "redis"), timeout_s=3)
    with pytest.raises(StoreUnavailable):
        plain.ping()
    # TLS without a client certificate, and with one from another CA
    for client in (None, "stranger"):
        with pytest.raises(redis.ConnectionError):
            redis_client(url(tls_redis), tls_of(redis_pki, client), socket_timeout=3).ping()
    # a server another CA signed (as the client sees it): the client refuses the server
    client = tls_of(redis_pki)
    wrong_ca = RedisTLS(str(redis_pki / "other-ca.crt"), client.cert_file, client.key_file)
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        redis_client(url(tls_redis), wrong_ca, socket_timeout=3).ping()
    # the right CA and client certificate, but a wrong password: the ACL refuses
    bad_password = url(tls_redis).replace(PASSWORD, "guess")
    with pytest.raises(redis.AuthenticationError):
        redis_client(bad_password, tls_of(redis_pki), socket_timeout=3).ping()
    assert redis_client(url(tls_redis), tls_of(redis_pki), socket_timeout=3).ping()


def test_tls_files_with_a_plaintext_url_are_refused_naming_the_settings(redis_pki):
    with pytest.raises(ValueError, match="use rediss:// for TLS"):
        RedisStateStore("redis://127.0.0.1:6379/0", tls=tls_of(redis_pki))
    with pytest.raises(ValueError, match="SHORTLIST_REDIS_CERT_FILE and SHORTLIST_REDIS_KEY_FILE"):
        RedisTLS(cert_file="/x.crt").options("rediss://127.0.0.1:6379/0")


# The ACL users of deploy/k8s/overlays/redis-cluster/redis-cluster.yaml (the replicator's
# and exporter's aside: no replicas, no exporter here).
CLUSTER_ACL = [
    "--user", "default", "off",
    "--user", "shortlist", "on", f">{PASSWORD}", "~sl:*", "&*", "+@all", "-@admin",
    "-@dangerous",
    "--user", "operator", "on", f">{PASSWORD}", "-@all", "+@connection", "+cluster", "+info",
    "+ping", "+config|get",
]  # fmt: skip


@pytest.fixture(scope="module")
def tls_cluster(redis_pki):
    """Three masters, TLS only (client certificates asked for), with the overlay's ACL
    users; the `operator` user forms the cluster, as the overlay's create Job does."""
    pki = redis_pki
    cluster = LocalRedisCluster(
        masters=3,
        tls=(str(pki / "ca.crt"), str(pki / "server.crt"), str(pki / "server.key")),
        server_args=CLUSTER_ACL,
        cli_auth=("operator", PASSWORD),
    )
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_the_cluster_router_works_over_tls_as_the_acl_user(tls_cluster, redis_pki, bundle):
    assert tls_cluster.url.startswith("rediss://")
    url = tls_cluster.url.replace("rediss://", f"rediss://shortlist:{PASSWORD}@")
    store = RedisStateStore(url, "sl:", timeout_s=3, tls=tls_of(redis_pki))
    assert store.router.cluster
    store.ping()
    # users spread over the three masters' slots: every master answers over TLS
    users = [bundle.users.id(i) for i in range(12)]
    events = [
        Event(f"ctls-{n}", user, bundle.items.id(n), Kind.LIKE, 1_700_000_000_000 + n)
        for n, user in enumerate(users)
    ]
    store.prepare(events, bundle.version)
    store.apply(events, {}, bundle.version)
    for n, user in enumerate(users):
        assert store.user_state(user, bundle.version).seen == {bundle.items.id(n)}
    assert sum(store.item_likes().values()) == len(users)
    # the ACL user: keys outside the prefix and admin commands are refused on every node
    client = store.router.client
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.set("other:key", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        client.config_set("maxmemory", "1", target_nodes=client.get_primaries()[0])
    store.close()
    # a client without a certificate, and one without the password, get nothing
    bare = RedisStateStore(url, "sl:", timeout_s=3, tls=tls_of(redis_pki, None))
    with pytest.raises(StoreUnavailable):
        bare.ping()
    anonymous = RedisStateStore(tls_cluster.url, "sl:", timeout_s=3, tls=tls_of(redis_pki))
    with pytest.raises(StoreUnavailable):
        anonymous.ping()
