"""The web console for people who run Shortlist: bundles, arms and rates, a user's feedback
and recommendations (with a like/dislike button behind an admin key), items, live events."""

from shortlist.services.console.app import create_console

__all__ = ["create_console"]
