"""``hpodctl dashboard``: a read-only web view of the daemon, for one user, on localhost.

It runs as the user who starts it and reads the daemon through :class:`hpod.client.Client` over
the socket, so the daemon answers it with that user's uid (SO_PEERCRED) and it shows exactly
what that user may read (``read_access``). It serves on 127.0.0.1 only, and every page and API
call needs the secret token printed in its URL, as Jupyter's does: the first page opened with
``?token=`` sets it as a cookie (HttpOnly, SameSite=Strict) for the rest; a request without it,
or with a Host header that is not the loopback address it serves on, is refused.

The pages (``static/dashboard.html`` and its script; no build step) fetch JSON from ``/api/...``
and follow ``/api/events``, a Server-Sent Events stream fed by the daemon's ``events`` long poll,
refetching what an event changes. starlette (routing, the event stream) and uvicorn (the ASGI
server, h11 only) are the ``dashboard`` extra; uPlot, the charts, ships in ``static/``.
"""

from __future__ import annotations

import argparse
import hmac
import json
import secrets
import sys
from collections.abc import AsyncIterator, Callable, Mapping
from importlib import resources
from typing import TYPE_CHECKING, Any

from hpod import wire
from hpod.client import Client
from hpod.errors import HpodError, NotFound

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

__all__ = ["EVENT_POLL_SECONDS", "make_app", "register"]

Command = Callable[[argparse.Namespace], int]
# hpod.cli.hpodctl.AddCommand's shape (not imported: hpodctl imports this module).
Add = Callable[[str, Command, str, str], argparse.ArgumentParser]

# How long one long poll of the daemon's events waits; the browser hears a comment line after
# each empty one (so a proxy or the browser keeps the stream open).
EVENT_POLL_SECONDS = 15.0
COOKIE = "hpod_dashboard"
STATIC = ("dashboard.html", "dashboard.js", "dashboard.css", "uPlot.iife.min.js", "uPlot.min.css")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}


def register(add: Add) -> None:
    p = add(
        "dashboard",
        _cmd_dashboard,
        "a read-only web dashboard on localhost (the URL carries a secret token); needs the "
        "dashboard extra",
        "hpodctl dashboard\nhpodctl dashboard --port 8765",
    )
    p.add_argument(
        "--port", type=int, default=0, help="the port on 127.0.0.1 (default: a free one)"
    )


def _cmd_dashboard(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        print("hpodctl: dashboard needs its extra: pip install 'hpod[dashboard]'", file=sys.stderr)
        return 2
    import socket

    socket_path = getattr(args, "socket", None)
    Client(socket_path).ping()  # no daemon: say so now, not in the browser
    token = secrets.token_urlsafe(24)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(128)  # before the URL is printed: a browser opened at once waits in the backlog
    port = sock.getsockname()[1]
    app = make_app(socket_path, token, port=port)
    print(f"hpod dashboard: http://127.0.0.1:{port}/?token={token}", flush=True)
    print("(read-only; Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(
        app, http="h11", ws="none", lifespan="off", log_level="warning", loop="asyncio"
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    return 0


def _static(name: str) -> bytes:
    return resources.files("hpod.cli").joinpath("static", name).read_bytes()


def make_app(socket_path: str | None, token: str, *, port: int) -> Starlette:
    """The ASGI app: the pages, their JSON and the event stream, behind ``token``."""
    import anyio
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
    from starlette.routing import Route

    hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    def allowed(request: Request) -> bool:
        if request.headers.get("host") not in hosts:
            return False
        given = request.cookies.get(COOKIE) or request.query_params.get("token") or ""
        return hmac.compare_digest(given.encode(), token.encode())

    def refused() -> Response:
        return Response(
            "hpod dashboard: open the URL that `hpodctl dashboard` printed (it has the token)\n",
            status_code=403,
            media_type="text/plain",
        )

    def api(make: Callable[[Request], Callable[[Client], Any]]) -> Callable[[Request], Any]:
        """An API endpoint: ``make(request)`` is what to ask the daemon, on a connection of
        its own in a worker thread (hpod.Client is synchronous)."""

        async def endpoint(request: Request) -> Response:
            if not allowed(request):
                return refused()
            ask = make(request)

            def call() -> Any:
                with Client(socket_path) as client:
                    return ask(client)

            try:
                result = await anyio.to_thread.run_sync(call)
            except NotFound as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            except HpodError as exc:
                return JSONResponse({"error": exc.message}, status_code=502)
            return Response(
                json.dumps(wire.tag(result), allow_nan=False),
                media_type="application/json",
                headers={"Cache-Control": "no-store"},
            )

        return endpoint

    async def page(request: Request) -> Response:
        if not allowed(request):
            return refused()
        given = request.query_params.get("token")
        if given is not None:
            # Once the cookie is set the token leaves the address bar (and the history).
            response: Response = RedirectResponse(request.url.remove_query_params("token"), 303)
            response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
            return response
        return Response(_static("dashboard.html"), media_type="text/html")

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            return Response("not found\n", status_code=404, media_type="text/plain")
        kind = _TYPES.get(name[name.rfind(".") :], "application/octet-stream")
        return Response(_static(name), media_type=kind, headers={"Cache-Control": "max-age=3600"})

    def studies(request: Request) -> Callable[[Client], Any]:
        return lambda c: {"studies": [_named(s) for s in c.studies()]}

    def study(request: Request) -> Callable[[Client], Any]:
        after = request.query_params.get("after", "0")
        since = int(after) if after.isdigit() else 0
        return lambda c: study_view(c, request.path_params["study"], after=since)

    def trial(request: Request) -> Callable[[Client], Any]:
        sid, n = request.path_params["study"], int(request.path_params["trial"])
        return lambda c: trial_view(c, sid, n)

    async def events(request: Request) -> Response:
        if not allowed(request):
            return refused()
        sid = request.query_params.get("study") or None
        after = request.headers.get("last-event-id") or request.query_params.get("after") or "0"
        cursor = int(after) if after.isdigit() else 0
        # tail=1: from the stream's end (the page has just fetched what is there now).
        tail = request.query_params.get("tail") == "1" and "last-event-id" not in request.headers
        return StreamingResponse(
            _event_stream(socket_path, sid, cursor, tail=tail),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    routes = [
        Route("/", page),
        Route("/study/{study}", page),
        Route("/study/{study}/trial/{trial:int}", page),
        Route("/static/{name}", static),
        Route("/api/studies", api(studies)),
        Route("/api/study/{study}", api(study)),
        Route("/api/study/{study}/trial/{trial:int}", api(trial)),
        Route("/api/events", events),
    ]
    return Starlette(routes=routes)


async def _event_stream(
    socket_path: str | None, sid: str | None, cursor: int, *, tail: bool
) -> AsyncIterator[str]:
    """The daemon's events as Server-Sent Events: ``id`` the event's (the browser resumes
    after it), ``data`` the event's JSON; a comment line after each empty poll. ``tail``: the
    events stored now are skipped, then one ``joined`` event says the page should refetch
    (whatever changed between its fetch and the join)."""
    import anyio

    client = Client(socket_path, timeout=EVENT_POLL_SECONDS + 30)
    params: dict[str, Any] = {"after": cursor}
    if sid is not None:
        params["study"] = sid

    async def poll(timeout: float) -> dict[str, Any]:
        page: dict[str, Any] = await anyio.to_thread.run_sync(
            client.call, "events", {**params, "timeout": timeout}, abandon_on_cancel=True
        )
        params["after"] = int(page.get("cursor", params["after"]))
        return page

    try:
        yield "retry: 1000\n\n"
        while tail:
            try:
                tail = bool((await poll(0.0)).get("events"))
            except NotFound as exc:  # no such study, or not one this user may read
                yield f"event: problem\ndata: {json.dumps(exc.message)}\n\n"
                return
            if not tail:
                yield f"id: {params['after']}\nevent: joined\ndata: {{}}\n\n"
        while True:
            try:
                page = await poll(EVENT_POLL_SECONDS)
            except NotFound as exc:
                yield f"event: problem\ndata: {json.dumps(exc.message)}\n\n"
                return
            except HpodError as exc:  # the daemon restarting: the browser hears it, we retry
                yield f"event: problem\ndata: {json.dumps(exc.message)}\n\n"
                await anyio.sleep(1.0)
                continue
            rows = page.get("events") or []
            for event in rows:
                text = json.dumps(wire.tag(event), allow_nan=False)
                yield f"id: {event['id']}\ndata: {text}\n\n"
            if not rows:
                yield ": nothing new\n\n"
    finally:
        client.close()


def study_view(client: Client, sid: str, *, after: int = 0) -> dict[str, Any]:
    """What the study page shows: the study (``show``), its trials, its report (best, GPU
    use), its curves' points past ``after`` (every page: the page keeps those it has, and
    asks only for the new ones) and the best as ``hpodctl best`` says it (None: none yet)."""
    detail = client.study(sid)
    sid = str(detail["study"])
    try:
        best: Any = client.best(sid)
    except NotFound:
        best = None
    return {
        "study": _named(detail),
        "trials": client.trials(sid),
        "report": _slim_report(client.report(sid)),
        "curves": [_slim_point(p) for p in _points_after(client, sid, after)],
        "curves_after": after,
        "best": best,
    }


def trial_view(client: Client, sid: str, trial: int) -> dict[str, Any]:
    """What the trial page shows: the trial, its curve and the tail of its stderr."""
    detail = client.study(sid)
    sid = str(detail["study"])
    out: dict[str, Any] = {
        "study": {k: detail.get(k) for k in ("study", "name", "state", "objective")},
        "trial": client.trial(sid, trial),
        "curve": [_slim_point(p) for p in client.curve_points(sid, trial)],
    }
    try:
        out["log"] = client.logs(sid, trial, "stderr", 100)
    except HpodError as exc:
        out["log"] = f"({exc.message})"
    return out


def _points_after(client: Client, sid: str, after: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor: int | None = after
    while cursor is not None:
        page = client.curves(sid, after=cursor)
        out.extend(page.get("points") or [])
        cursor = page.get("next")
    return out


def _named(study: dict[str, Any]) -> dict[str, Any]:
    """The study with its owner's user name beside the uid (None: no such user here)."""
    import pwd

    try:
        name: str | None = pwd.getpwuid(int(study["owner"])).pw_name
    except (KeyError, TypeError, ValueError):
        name = None
    return {**study, "owner_name": name}


def _slim_point(p: Mapping[str, Any]) -> dict[str, Any]:
    return {k: p.get(k) for k in ("id", "trial", "run", "resource", "at", "value")}


def _slim_report(report: Mapping[str, Any]) -> dict[str, Any]:
    keys = ("elapsed", "compute", "limits", "gpus", "top_k", "generated")
    return {k: report.get(k) for k in keys}
