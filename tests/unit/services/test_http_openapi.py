"""The OpenAPI document is generated from the proto descriptors: every field of every message
the HTTP API reads or writes is in it under its proto3 JSON name, with a fitting type."""

from __future__ import annotations

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from shortlist.services.http_api import ENDPOINTS, HTTP_STATUS, openapi_document


def messages(descriptor: Descriptor, seen: dict[str, Descriptor]) -> dict[str, Descriptor]:
    """`descriptor` and every message reachable from its fields (map entries excepted)."""
    if descriptor.full_name not in seen:
        seen[descriptor.full_name] = descriptor
        for f in descriptor.fields:
            if f.message_type is not None:
                target = f.message_type
                if target.GetOptions().map_entry:
                    target = target.fields_by_name["value"].message_type
                if target is not None:
                    messages(target, seen)
    return seen


def test_every_field_of_every_api_message_is_in_the_schema():
    document = openapi_document()
    schemas = document["components"]["schemas"]
    seen: dict[str, Descriptor] = {}
    for e in ENDPOINTS:
        messages(e.request.DESCRIPTOR, seen)
        messages(e.response.DESCRIPTOR, seen)
    assert {"shortlist.v1.ScoredItem", "shortlist.v1.FeedbackEvent"} <= set(seen)
    missing = [
        f"{name}.{f.json_name}"
        for name, d in seen.items()
        for f in d.fields
        if f.json_name not in schemas[name]["properties"]
    ]
    assert not missing, missing
    for name, d in seen.items():  # nothing in the schema that the proto lacks
        assert set(schemas[name]["properties"]) == {f.json_name for f in d.fields}, name


def test_field_types_follow_proto3_json():
    props = openapi_document()["components"]["schemas"]
    request = props["shortlist.v1.RecommendRequest"]["properties"]
    assert request["k"] == {"type": "integer", "format": "int32"}
    assert request["context"] == {"type": "object", "additionalProperties": {"type": "string"}}
    assert request["excludeItemIds"] == {"type": "array", "items": {"type": "string"}}
    event = props["shortlist.v1.FeedbackEvent"]["properties"]
    assert event["timestampMs"]["type"] == "string"  # int64 is a string in proto3 JSON
    assert "FEEDBACK_KIND_LIKE" in event["kind"]["enum"]
    reply = props["shortlist.v1.RecommendResponse"]["properties"]
    assert reply["items"]["items"] == {"$ref": "#/components/schemas/shortlist.v1.ScoredItem"}
    assert reply["fallbackUsed"] == {"type": "boolean"}


def test_every_path_names_its_request_and_response_and_error_statuses():
    document = openapi_document()
    for e in ENDPOINTS:
        post = document["paths"][e.path]["post"]
        body = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert body.endswith(e.request.DESCRIPTOR.full_name)
        ok = post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        assert ok.endswith(e.response.DESCRIPTOR.full_name)
        assert {"400", "401", "403", "404", "429", "503", "504"} <= set(post["responses"])


def test_grpc_codes_map_to_http_statuses():
    code = grpc.StatusCode
    assert HTTP_STATUS[code.INVALID_ARGUMENT] == 400
    assert HTTP_STATUS[code.UNAUTHENTICATED] == 401
    assert HTTP_STATUS[code.PERMISSION_DENIED] == 403
    assert HTTP_STATUS[code.NOT_FOUND] == 404
    assert HTTP_STATUS[code.RESOURCE_EXHAUSTED] == 429
    assert HTTP_STATUS[code.DEADLINE_EXCEEDED] == 504
    assert HTTP_STATUS[code.UNAVAILABLE] == 503
    assert set(HTTP_STATUS) == set(code)


def test_scalar_types_cover_every_proto_field_type():
    from shortlist.services.http_api import _SCALARS

    compound = {FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_ENUM, FieldDescriptor.TYPE_GROUP}
    every = {v for k, v in vars(FieldDescriptor).items() if k.startswith("TYPE_")}
    assert every - compound <= set(_SCALARS)
