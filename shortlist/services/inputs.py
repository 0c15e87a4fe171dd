"""Checks of what a client sends that need the domain (the request context), done once at
each gRPC edge; the plain field checks are `shortlist.rpc.validation`."""

from __future__ import annotations

from collections.abc import Mapping

from shortlist.config import Settings
from shortlist.ranking.context import RequestContext, parse_context
from shortlist.rpc.validation import InvalidInput, require_context


def parsed_context(context: Mapping[str, str], settings: Settings) -> RequestContext:
    """The request context, sized and parsed; InvalidInput names the bad key."""
    require_context(context, settings.max_context_entries, settings.max_id_length)
    try:
        return parse_context(context)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
