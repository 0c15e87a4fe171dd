"""The web console's parts that need no server: who may act (access), how reasons read."""

from __future__ import annotations

import pytest

from shortlist.config import Settings
from shortlist.rpc.security import hash_key
from shortlist.services.console.access import ActionKeys, Refused


def keys(**settings: str) -> ActionKeys:
    return ActionKeys(Settings.from_env({}, **settings))


def refusal(action_keys: ActionKeys, headers: dict[str, str]) -> Refused:
    with pytest.raises(Refused) as caught:
        action_keys.authorize(headers)
    return caught.value


def test_without_configured_keys_the_console_is_read_only():
    k = keys()
    assert k.read_only
    refused = refusal(k, {"x-api-key": "anything"})
    assert refused.status == 403 and "read-only" in refused.message


def test_a_console_key_is_accepted_as_header_or_bearer():
    k = keys(console_key_hashes=hash_key("admin"))
    assert not k.read_only
    assert k.authorize({"X-Api-Key": "admin"}) == "admin"
    assert k.authorize({"Authorization": "Bearer admin"}) == "admin"


def test_missing_wrong_and_unscoped_keys_are_refused_with_their_reason():
    k = keys(console_key_hashes=f"{hash_key('admin')}:feedback,{hash_key('reader')}:recommend")
    assert refusal(k, {}).status == 401
    assert "missing admin key" in refusal(k, {}).message
    assert refusal(k, {"x-api-key": "nope"}).message == "invalid or revoked admin key"
    reader = refusal(k, {"x-api-key": "reader"})
    assert reader.status == 403 and "lacks scope 'feedback'" in reader.message


def test_gateway_keys_with_the_feedback_scope_act_too():
    k = keys(api_key_hashes=f"{hash_key('app')}:feedback,{hash_key('ro')}:recommend")
    assert k.authorize({"x-api-key": "app"}) == "app"
    assert refusal(k, {"x-api-key": "ro"}).status == 403


def test_a_malformed_configured_hash_is_an_error_at_start():
    with pytest.raises(ValueError, match="not sha256 hex"):
        keys(console_key_hashes="not-a-hash")


def test_reasons_read_as_sentences_and_unknown_fields_are_kept():
    from jinja2 import Environment, FileSystemLoader

    from shortlist.services.console.app import HERE

    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=True)
    reasons_text = env.get_template("macros.html").module.reasons_text
    text = reasons_text(
        {
            "sources": ["precomputed"],
            "becauseLiked": ["jazz-1", "jazz-2"],
            "topFeatures": [{"feature": "cooc_sum_likes", "value": 3.0, "contribution": 0.25}],
            "rules": [],
            "novelty": "high",
        }
    )
    assert str(text).strip() == (
        "because you liked jazz-1, jazz-2 · from precomputed · "
        "ranker: cooc_sum_likes +0.250 · novelty: high"
    )
