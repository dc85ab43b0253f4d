"""The web dashboard (``isopool dashboard``): a Starlette app over ``_inspect.snapshot``.

What it serves::

    GET  /[?queue=Q]               the page (static HTML; the script draws everything)
    GET  /static/app.js, app.css   the page's only script and style sheet
    GET  /api/snapshot[?queue=Q]   the snapshot as JSON, plus whether actions are on
    POST /api/queues/Q/dead/E/requeue   re-queue dead letter E (its stream entry id)
    POST /api/queues/Q/dead/E/delete    delete dead letter E and its dead job
    POST /api/queues/Q/jobs/ID/cancel   cancel job ID

Security, because a queue's contents come from whoever can write to its Redis:

- It never unpickles: the snapshot holds names, ids and sizes (``_inspect``). The
  page builds its DOM with ``textContent`` only, never ``innerHTML``, so a job named
  ``<script>`` is text; and the Content-Security-Policy allows scripts from this
  origin's files only (no inline script, no eval), so markup that did slip in could
  not run. ``frame-ancestors 'none'`` and X-Frame-Options stop click-jacking.
- Actions are POST only (a GET of an action URL is 405, so no link or prefetch can
  change anything) and need the token (``--token`` / ``ISOPOOL_DASHBOARD_TOKEN``) in
  the ``X-Isopool-Token`` header, compared in constant time. No cookie is ever set, so
  a cross-site form has nothing to ride on; a custom header cannot be sent
  cross-origin without a CORS preflight, which this app never grants; and the Origin
  header must name this very host, which also refuses a same-site page on another
  port. Without a token the dashboard is read-only, and says so.
- The Host header must be one the dashboard was told it is (loopback names by
  default), which defeats DNS rebinding: a hostile site that points its own name at
  127.0.0.1 cannot read the API either.
- The dashboard holds no signing secret: its RedisQueue handles (for requeue and
  cancel, which sign nothing) get a random throwaway key, so it cannot forge a job.
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from importlib import resources
from typing import Any, Final

from .._errors import QueueUnavailableError
from . import inspect as _inspect
from .redis_common import LUA_EPOCH_CHECK

__all__ = ["create_app"]

log = logging.getLogger(__name__)

TOKEN_HEADER: Final = "x-isopool-token"
LOOPBACK_HOSTS: Final = ("127.0.0.1", "localhost", "::1", "[::1]")
_ENTRY: Final = re.compile(r"^[0-9]{1,20}-[0-9]{1,20}$")  # a stream entry id
_JOB_ID: Final = re.compile(r"^[0-9a-f]{1,64}$")
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
_HEADERS: Final = [
    (b"content-security-policy", _CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]

# KEYS: epoch dead job   ARGV: epoch entry id
# Delete one dead letter: its entry in the dead stream and, if it is still dead, its job.
_LUA_DELETE_DEAD = (
    LUA_EPOCH_CHECK
    + """
local gone = redis.call('XDEL', KEYS[2], ARGV[2])
if redis.call('HGET', KEYS[3], 'status') == 'dead' then redis.call('DEL', KEYS[3]) end
return gone
"""
)


class _SecurityHeaders:
    """ASGI middleware: the security headers on every response."""

    def __init__(self, app: Any) -> None:  # noqa: ANN401 - an ASGI app
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:  # noqa: ANN401
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _Actions:
    """The write side: each action checks origin and token, then one queue call."""

    def __init__(self, client: Any, url: str, token: str | None) -> None:  # noqa: ANN401
        self.client = client
        self.url = url
        self.token = token
        self._queues: dict[str, Any] = {}
        self._delete = client.register_script(_LUA_DELETE_DEAD)

    def refusal(self, request: Any) -> tuple[int, str] | None:  # noqa: ANN401 - a Request
        """Why this POST may not act (status, message), or None if it may."""
        if self.token is None:
            return 403, "read-only: start the dashboard with --token to enable actions"
        origin = request.headers.get("origin")
        host = request.headers.get("host", "")
        if origin is None or origin != f"{request.url.scheme}://{host}":
            return 403, "refused: the request's Origin is not this dashboard"
        if request.headers.get("sec-fetch-site", "same-origin") != "same-origin":
            return 403, "refused: not a same-origin request"
        given = request.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return 403, "refused: wrong or missing token"
        return None

    def queue(self, name: str) -> Any:  # noqa: ANN401 - a RedisQueue
        """A RedisQueue handle on ``name`` (which must exist) with a throwaway key."""
        if name not in self._queues:
            from .redis_queue import RedisQueue

            if not self.client.exists(f"{_inspect.prefix_of(name)}:epoch"):
                raise LookupError(f"no queue named {name!r} in this Redis")
            # requeue and cancel sign nothing: the dashboard needs, and has, no secret;
            # its throwaway key is neither checked nor recorded in the queue's key check.
            self._queues[name] = RedisQueue(
                self.url, name, secret=secrets.token_bytes(32), client=self.client, keycheck=False
            )
        return self._queues[name]

    def forget(self, name: str) -> None:
        """Drop the cached handle on queue ``name``."""
        self._queues.pop(name, None)

    def job_of_entry(self, name: str, entry: str) -> str:
        """The job id of dead letter ``entry`` of queue ``name``."""
        got = self.client.xrange(f"{_inspect.prefix_of(name)}:dead", entry, entry)
        if not got:
            raise LookupError(f"no dead letter {entry} in queue {name!r}")
        return _text(got[0][1].get(b"id", b""))

    def requeue(self, name: str, entry: str) -> str:
        """Re-queue a dead letter's job; its letter leaves the dead stream."""
        queue = self.queue(name)
        job_id = self.job_of_entry(name, entry)
        if not queue.requeue(job_id):
            return f"job {job_id} is no longer dead, failed or cancelled: left as it is"
        self.client.xdel(f"{queue.prefix}:dead", entry)
        return f"job {job_id} re-queued"

    def delete(self, name: str, entry: str) -> str:
        """Delete a dead letter and its job (if that job is still dead)."""
        queue = self.queue(name)
        job_id = self.job_of_entry(name, entry)
        keys = [f"{queue.prefix}:epoch", f"{queue.prefix}:dead", queue.job_key(job_id)]
        self._delete(keys=keys, args=[queue.epoch, entry, job_id])
        return f"dead letter of job {job_id} deleted"

    def cancel(self, name: str, job_id: str) -> str:
        """Cancel a job: at once if it waits, by its worker if it runs."""
        if self.queue(name).job(job_id).cancel():
            return f"job {job_id} cancelled"
        return f"job {job_id} had already ended"


def create_app(
    client: Any,  # noqa: ANN401 - a redis.Redis
    *,
    url: str,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Any:  # noqa: ANN401 - a Starlette app
    """Build the dashboard's ASGI app over ``client``.

    Args:
        client: A ``redis.Redis`` (bytes replies).
        url: Its URL (used for the queue handles that run actions).
        token: The actions' token; None for a read-only dashboard.
        allowed_hosts: Host names the page may be reached by (default: loopback).

    Returns:
        A Starlette application.
    """
    import redis
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    actions = _Actions(client, url, token or None)
    static = resources.files("isopool") / "_static"
    files = {
        "index.html": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "app.css": "text/css; charset=utf-8",
    }
    bodies = {name: (static / name).read_bytes() for name in files}

    def page(_request: Request) -> Response:
        return Response(bodies["index.html"], media_type=files["index.html"])

    def asset(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in files or name == "index.html":
            return Response("not found", status_code=404, media_type="text/plain")
        return Response(bodies[name], media_type=files[name])

    def api_snapshot(request: Request) -> Response:
        only = request.query_params.get("queue")
        try:
            data = _inspect.snapshot(client, None if only is None else [only])
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            return JSONResponse({"error": f"cannot reach Redis: {exc}"}, status_code=503)
        data["read_only"] = actions.token is None
        return JSONResponse(data)

    def action(what: str) -> Any:  # noqa: ANN401 - an endpoint
        check = _JOB_ID if what == "cancel" else _ENTRY

        def act(request: Request) -> Response:
            refused = actions.refusal(request)
            if refused is not None:
                return JSONResponse({"error": refused[1]}, status_code=refused[0])
            name, target = request.path_params["queue"], request.path_params["target"]
            if not check.match(target):
                return JSONResponse({"error": f"bad id {target!r}"}, status_code=400)
            try:
                message = getattr(actions, what)(name, target)
            except LookupError as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except (QueueUnavailableError, redis.ConnectionError, redis.TimeoutError) as exc:
                actions.forget(name)  # its epoch may be gone: a new handle next time
                return JSONResponse({"error": str(exc)}, status_code=503)
            log.info("dashboard: %s %s in %r: %s", what, target, name, message)
            return JSONResponse({"ok": True, "message": message})

        return act

    hosts = list(allowed_hosts) if allowed_hosts else list(LOOPBACK_HOSTS)
    return Starlette(
        routes=[
            Route("/", page, methods=["GET"]),
            Route("/static/{name}", asset, methods=["GET"]),
            Route("/api/snapshot", api_snapshot, methods=["GET"]),
            Route("/api/queues/{queue}/dead/{target}/requeue", action("requeue"), methods=["POST"]),
            Route("/api/queues/{queue}/dead/{target}/delete", action("delete"), methods=["POST"]),
            Route("/api/queues/{queue}/jobs/{target}/cancel", action("cancel"), methods=["POST"]),
        ],
        middleware=[
            Middleware(_SecurityHeaders),
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
        ],
    )


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)
