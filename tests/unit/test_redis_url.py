"""The store URL picks a single Redis or a Redis Cluster (`?cluster=1`)."""

from __future__ import annotations

import pytest

from shortlist.feedback.stores.redis_router import split_cluster_flag
from shortlist.feedback.stores.redis_store import RedisStateStore


@pytest.mark.parametrize(
    ("url", "rest", "cluster"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0", False),
        ("redis://h:7000/0?cluster=1", "redis://h:7000/0", True),
        ("redis://h:7000/0?cluster=true", "redis://h:7000/0", True),
        ("redis://h:7000/0?cluster=0", "redis://h:7000/0", False),
        (
            "rediss://:pw@h:7000/0?cluster=yes&ssl_cert_reqs=none",
            "rediss://:pw@h:7000/0?ssl_cert_reqs=none",
            True,
        ),
    ],
)
def test_the_cluster_flag_is_taken_out_of_the_url(url, rest, cluster):
    assert split_cluster_flag(url) == (rest, cluster)


def test_a_prefix_with_braces_is_refused_as_it_would_change_the_hash_tags():
    with pytest.raises(ValueError, match="braces"):
        RedisStateStore("redis://127.0.0.1:1/0", prefix="sl:{x}:")
    assert RedisStateStore("redis://127.0.0.1:1/0", prefix="sl:").user_key("u}1", "seen") == (
        "sl:{u:u}1}:seen"
    )
