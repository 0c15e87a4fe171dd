"""Event ids the gateway publishes: scoped per caller, derived when the client sends none."""

from __future__ import annotations

import pytest

from shortlist.feedback.events import Kind, derived_event_id, scoped_event_id
from shortlist.rpc.security import PUBLIC_SCOPES, hash_key, parse_keys, subject_key_id


def test_derived_id_is_deterministic_and_depends_on_every_field():
    base = ("0123456789ab", "u1", "i1", int(Kind.LIKE), 1_700_000_000_000)
    first = derived_event_id(*base)
    assert first == derived_event_id(*base)
    assert len(first) == 32 and all(c in "0123456789abcdef" for c in first)
    variants = [
        ("fedcba987654", *base[1:]),
        (base[0], "u2", *base[2:]),
        (*base[:2], "i2", *base[3:]),
        (*base[:3], int(Kind.DISLIKE), base[4]),
        (*base[:4], base[4] + 1),
    ]
    ids = {derived_event_id(*v) for v in variants}
    assert first not in ids and len(ids) == len(variants)


def test_derived_id_fields_cannot_run_into_each_other():
    # Plain concatenation would make these two the same text.
    assert derived_event_id("k", "ab", "c", 1, 5) != derived_event_id("k", "a", "bc", 1, 5)
    assert derived_event_id("k", "u", "i1", 1, 5) != derived_event_id("k", "u", "i", 11, 5)


def test_scoped_id_prefixes_the_key_id():
    assert scoped_event_id("0123456789ab", "client-1") == "0123456789ab:client-1"
    assert scoped_event_id("a", "x") != scoped_event_id("b", "x")


def test_subject_key_id_is_short_and_unambiguous():
    # Subjects containing ':' would be ambiguous as plain prefixes; hashed they are not.
    a = scoped_event_id(subject_key_id("alice"), "x:y")
    b = scoped_event_id(subject_key_id("alice:x"), "y")
    assert a != b
    assert len(subject_key_id("u" * 200)) == 17


def test_parse_keys_scopes_and_backward_compatibility():
    a, b, c = hash_key("a"), hash_key("b"), hash_key("c")
    keys = parse_keys(f"{a}, {b}:recommend ,{c.upper()}:feedback+Recommend,")
    assert keys == {
        a: PUBLIC_SCOPES,  # no scopes given: all public scopes, as before scopes existed
        b: frozenset({"recommend"}),
        c: frozenset({"recommend", "feedback"}),
    }
    assert parse_keys("") == {}
    assert parse_keys(f"{a}:admin+recommend")[a] == frozenset({"admin", "recommend"})
    assert "admin" not in parse_keys(a)[a]  # never by default


@pytest.mark.parametrize(
    "value, message",
    [
        (f"{hash_key('a')}:root", "scopes must be some of"),
        (f"{hash_key('a')}:", "scopes must be some of"),
        (f"{hash_key('a')}:recommend,{hash_key('a')}", "configured twice"),
        ("raw-secret-key:recommend", "not sha256 hex"),
    ],
)
def test_parse_keys_refuses_bad_entries_without_echoing_keys(value, message):
    with pytest.raises(ValueError, match=message) as err:
        parse_keys(value)
    assert "raw-secret-key" not in str(err.value)
