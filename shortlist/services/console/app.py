"""The console as a Starlette application, to mount under the HTTP front door:

    Mount("/console", app=create_console(settings))

Pages are rendered on the server (Jinja2) and kept live by a small vanilla script that
polls the JSON API under `api/` (docs/decisions/0036-web-console.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from shortlist.config import Settings
from shortlist.feedback.stores import StateStore
from shortlist.services.console.access import Refused
from shortlist.services.console.backend import ConsoleBackend
from shortlist.services.console.feed import EventFeed

HERE = Path(__file__).resolve().parent
MAX_BODY_BYTES = 4096


def _base(request: Request) -> str:
    """The console's path prefix as the browser sees it (where it is mounted)."""
    return request.scope.get("root_path", "").rstrip("/")


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise Refused(400, f"{name} must be an integer, got {raw!r}") from None


def create_console(
    settings: Settings | None = None,
    *,
    gateway_target: str | Callable[[], str] | None = None,
    store: StateStore | None = None,
    metrics_targets: list[str] | None = None,
    feed: EventFeed | None = None,
) -> Starlette:
    """The console app over the services `settings` name (gateway address, state store,
    bundle root, metrics ports, feedback topic); the keyword arguments override them (tests,
    the in-process stack, whose gateway port is known only once started: `gateway_target`
    may be a function, called on first use). `app.state.console.close()` releases its
    connections."""
    backend = ConsoleBackend(
        settings or Settings.from_env(), gateway_target, store, metrics_targets, feed
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["tojson_compact"] = lambda v: json.dumps(v, sort_keys=True)

    def page(request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(base=_base(request), read_only=backend.keys.read_only)
        return templates.TemplateResponse(request, name, context, status_code=status)

    def error_page(request: Request, refused: Refused) -> Response:
        return page(request, "error.html", refused.status, message=refused.message)

    async def overview(request: Request) -> Response:
        return page(request, "overview.html", data=await run_in_threadpool(backend.overview))

    async def user_page(request: Request) -> Response:
        try:
            data = await run_in_threadpool(
                backend.user, request.path_params["user_id"], _int(request, "k", 10)
            )
        except Refused as refused:
            return error_page(request, refused)
        return page(request, "user.html", data=data)

    async def item_page(request: Request) -> Response:
        try:
            data = await run_in_threadpool(backend.item, request.path_params["item_id"])
        except Refused as refused:
            return error_page(request, refused)
        return page(request, "item.html", data=data)

    async def feed_page(request: Request) -> Response:
        return page(request, "feed.html")

    async def find(request: Request) -> Response:
        """The navigation form: ?user=ID or ?item=ID to that page."""
        from urllib.parse import quote

        for field, path in (("user", "users"), ("item", "items")):
            value = request.query_params.get(field, "").strip()
            if value:
                return RedirectResponse(f"{_base(request)}/{path}/{quote(value, safe='')}", 303)
        return error_page(request, Refused(400, "give a user or an item id"))

    def api(handler):
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handler(request))
            except Refused as refused:
                return JSONResponse({"error": refused.message}, status_code=refused.status)

        return endpoint

    async def api_overview(request: Request) -> Any:
        return await run_in_threadpool(backend.overview)

    async def api_user(request: Request) -> Any:
        k = _int(request, "k", 10)
        return await run_in_threadpool(backend.user, request.path_params["user_id"], k)

    async def api_item(request: Request) -> Any:
        return await run_in_threadpool(backend.item, request.path_params["item_id"])

    async def api_events(request: Request) -> Any:
        return await run_in_threadpool(backend.events, _int(request, "after", 0))

    async def api_feedback(request: Request) -> Any:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise Refused(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw or b"null")
        except ValueError as exc:
            raise Refused(400, f"the body is not JSON: {exc}") from None
        headers = dict(request.headers)
        return await run_in_threadpool(backend.send_feedback, headers, body)

    routes = [
        Route("/", overview, name="overview"),
        Route("/users/{user_id:path}", user_page, name="user"),
        Route("/items/{item_id:path}", item_page, name="item"),
        Route("/feed", feed_page, name="feed"),
        Route("/find", find, name="find"),
        Route("/api/overview", api(api_overview)),
        Route("/api/users/{user_id:path}", api(api_user)),
        Route("/api/items/{item_id:path}", api(api_item)),
        Route("/api/events", api(api_events)),
        Route("/api/feedback", api(api_feedback), methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
        Mount(
            "/reports",
            StaticFiles(directory=str(backend.reports_dir), check_dir=False),
            name="reports",
        ),
    ]
    app = Starlette(routes=routes)
    app.state.console = backend
    return app
