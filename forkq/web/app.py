"""The dashboard as a Starlette (ASGI) application: ``create_app(...)``.

Why Starlette: it is a small, well-kept ASGI toolkit that mounts inside FastAPI or
Starlette apps as is, inside Django's ASGI app through a path router, and inside
Flask (WSGI) through ``a2wsgi``; uvicorn serves it standalone (``forkq web``).
Pages are server-rendered Jinja2; the only JavaScript is the vendored uPlot
charts and a small ``app.js`` (no CDN: the dashboard works offline).

Every link is built from the request's ``root_path``, so the app works under a
prefix (mounted, or behind a reverse proxy with ``--root-path``).

Security:
* every POST carries a CSRF token bound to a signed session cookie (synchronizer
  token, checked with ``hmac.compare_digest``); the cookie is ``SameSite=Strict``;
* ``read_only=True`` hides every action and refuses every non-GET request (403);
* ``password=...`` requires HTTP basic auth (any user name unless ``username``);
* ``authorize=callable(request) -> bool`` lets a host application plug in its
  own rule (e.g. "is a staff user") when it mounts the dashboard;
* a strict Content-Security-Policy: scripts only from the app's own static files.

(Over 400 lines on purpose: the dashboard's routes, CSRF and auth in one Starlette app; the data work is in queries.py.)
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import math
import secrets
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
import redis
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Receive, Scope, Send

from .. import job as jobcodec
from ..client import Client
from ..config import env_value
from ..connection import ConnectionSpec, redact
from ..errors import ConfigError, ForkqError, NotDeleted, NotRetried
from . import metrics, queries

log = logging.getLogger("forkq.web")

HERE = Path(__file__).resolve().parent
PER_PAGE = 25
POLL_SECONDS = 5.0
SAMPLER_SECONDS = 20.0

_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'self'; form-action 'self'; base-uri 'none'")


class Forbidden(Exception):
    """Refused: CSRF token wrong, read-only dashboard."""


# ---------------------------------------------------------------------------
# Middleware
# ---------------------------------------------------------------------------

class BasicAuth:
    """HTTP basic auth in front of everything (static files and /metrics included)."""

    def __init__(self, app: ASGIApp, *, password: str, username: str | None) -> None:
        self.app = app
        self._password = password.encode()
        self._username = username.encode() if username is not None else None

    def _ok(self, header: bytes) -> bool:
        scheme, _, value = header.partition(b" ")
        if scheme.lower() != b"basic":
            return False
        try:
            user, sep, pw = base64.b64decode(value.strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        if not sep:
            return False
        good = hmac.compare_digest(pw, self._password)
        if self._username is not None:
            good = hmac.compare_digest(user, self._username) and good
        return good

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope["headers"]).get(b"authorization", b"")
        if not self._ok(header):
            resp = PlainTextResponse("authentication required\n", status_code=401,
                                     headers={"WWW-Authenticate": 'Basic realm="forkq", charset="UTF-8"'})
            await resp(scope, receive, send)
            return
        await self.app(scope, receive, send)


class Guard:
    """Read-only refusal, the host's ``authorize`` rule, and security headers."""

    def __init__(self, app: ASGIApp, *, read_only: bool,
                 authorize: Callable[[Request], bool] | None) -> None:
        self.app = app
        self.read_only = read_only
        self.authorize = authorize

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # In a worker thread: a host's rule may block (Django's ORM refuses to run on
        # the event loop).
        if self.authorize is not None and not await run_in_threadpool(self.authorize, Request(scope)):
            await PlainTextResponse("forbidden\n", status_code=403)(scope, receive, send)
            return
        if self.read_only and scope["method"] not in ("GET", "HEAD"):
            await PlainTextResponse("this dashboard is read-only\n", status_code=403)(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"content-security-policy", _CSP.encode()),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin")]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---------------------------------------------------------------------------
# Formatting helpers (Jinja filters)
# ---------------------------------------------------------------------------

def _when(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch))


def _ago(seconds: float) -> str:
    s = abs(seconds)
    if s < 60:
        text = f"{s:.0f}s"
    elif s < 3600:
        text = f"{s / 60:.0f}m"
    elif s < 86400:
        text = f"{s / 3600:.1f}h"
    else:
        text = f"{s / 86400:.1f}d"
    return ("in " + text) if seconds < 0 else (text + " ago")


def _num(n: float | int) -> str:
    return f"{int(n):,}"


def _dur(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _backtrace(data: Any) -> str:
    """A stored entry's traceback lines (Sidekiq's compressed ``error_backtrace``), as text."""
    lines = jobcodec.backtrace_of(data) if isinstance(data, dict) else None
    return "\n".join(lines) if lines else ""


def _pretty(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()


# ---------------------------------------------------------------------------
# The application
# ---------------------------------------------------------------------------

class Dashboard:
    """State shared by the routes: one ``Client`` (thread-safe connection pool)."""

    def __init__(self, client: Client, *, read_only: bool, title: str) -> None:
        self.client = client
        self.keys = client.keys
        self.conn: redis.Redis = client.connection
        self.read_only = read_only
        self.title = title
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        env = self.templates.env
        env.autoescape = True
        env.filters.update(when=_when, ago=_ago, num=_num, dur=_dur, backtrace=_backtrace,
                           pretty=_pretty)

    # -- rendering -------------------------------------------------------------------------------
    def render(self, request: Request, template: str, **ctx: Any) -> Response:
        session = request.session
        token = session.get("csrf")
        if not isinstance(token, str):
            token = session["csrf"] = secrets.token_urlsafe(32)
        flash = session.pop("flash", None)

        def url(route: str, query: dict[str, Any] | None = None, **params: Any) -> str:
            path = request.url_for(route, **params).path
            q = {k: v for k, v in (query or {}).items() if v not in (None, "")}
            return path + ("?" + urlencode(q) if q else "")

        base = {"title": self.title, "namespace": self.keys.namespace, "read_only": self.read_only,
                "csrf": token, "flash": flash, "url": url, "now": queries.redis_time(self.conn),
                "nav": template.removesuffix(".html"), "poll_seconds": POLL_SECONDS}
        return self.templates.TemplateResponse(request, template, {**base, **ctx})

    # -- pages -----------------------------------------------------------------------------------
    def overview(self, request: Request) -> Response:
        snap = queries.snapshot(self.client)
        queries.record_sample(self.client, snap)
        procs = queries.processes(self.conn, self.keys)
        threads = sum(p.concurrency for p in procs)
        return self.render(request, "overview.html", s=snap, threads=threads,
                           day_rows=queries.days(self.conn, self.keys, count=30, now=snap["t"]))

    def api_stats(self, request: Request) -> Response:
        snap = queries.snapshot(self.client)
        queries.record_sample(self.client, snap)
        return JSONResponse(snap)

    def api_history(self, request: Request) -> Response:
        try:
            minutes = max(1, min(queries.HISTORY_MINUTES, int(request.query_params.get("minutes", 60))))
        except ValueError:
            minutes = 60
        now = queries.redis_time(self.conn)
        return JSONResponse({"t": now, "samples": queries.history(self.conn, self.keys,
                                                                  minutes=minutes, now=now),
                             "days": queries.days(self.conn, self.keys, count=30, now=now)})

    def busy(self, request: Request) -> Response:
        procs = queries.processes(self.conn, self.keys)
        return self.render(request, "busy.html", procs=procs,
                           threads=sum(p.concurrency for p in procs),
                           busy=sum(len(p.running) for p in procs),
                           rss_kb=sum(p.rss_kb for p in procs))

    def queues_page(self, request: Request) -> Response:
        qs = self.client.queues()
        served = queries.served_queues(queries.processes(self.conn, self.keys))
        return self.render(request, "queues.html", queues=qs, served=served)

    def queue_page(self, request: Request) -> Response:
        name = request.query_params.get("name", "")
        page = _page(request)
        jobs, total = queries.queue_jobs(self.conn, self.keys, name, page, PER_PAGE)
        paused = self.client.is_paused(name)
        served = queries.served_queues(queries.processes(self.conn, self.keys)).get(name, 0)
        groups = self.client.groups(name)[:100]
        return self.render(request, "queue.html", name=name, jobs=jobs, total=total, page=page,
                           pages=_pages(total), paused=paused, served=served, groups=groups)

    def set_page(self, request: Request) -> Response:
        which = request.path_params["which"]
        key = queries.set_key(self.keys, which)
        newest_first = which == "dead"
        term = request.query_params.get("q", "").strip()
        page = _page(request)
        result = None
        if term:
            result = queries.search(self.conn, key, term, newest_first=newest_first)
            total = len(result.entries)
            entries = result.entries[(page - 1) * PER_PAGE: page * PER_PAGE]
            set_size = int(self.conn.zcard(key))
        else:
            entries, total = queries.page_of(self.conn, key, page, PER_PAGE, newest_first=newest_first)
            set_size = total
        return self.render(request, "set.html", which=which, entries=entries, total=total,
                           set_size=set_size, page=page, pages=_pages(total), q=term, search=result)

    def entry_page(self, request: Request) -> Response:
        which = request.path_params["which"]
        key = queries.set_key(self.keys, which)
        score, jid = queries.parse_entry_key(request.query_params.get("key", ""))
        found = queries.find_entries(self.conn, key, score, jid)
        if not found:
            return self.render(request, "missing.html", what=f"{which} job {jid}", which=which)
        return self.render(request, "entry.html", which=which, e=found[0], data=found[0].data)

    def periodic_page(self, request: Request) -> Response:
        items, complete = queries.periodic(self.conn, self.keys)
        return self.render(request, "periodic.html", items=items, complete=complete)

    def batches_page(self, request: Request) -> Response:
        bid = request.query_params.get("bid", "").strip()
        if bid:
            one = self.client.batch(bid)
            found = [one] if one is not None else []
        else:
            found = self.client.batches(100)
        return self.render(request, "batches.html", batches=found, bid=bid)

    def job_page(self, request: Request) -> Response:
        jid = request.query_params.get("jid", "").strip()
        locs = queries.locate(self.conn, self.keys, jid) if jid else []
        # Its state by jid (Client.result): also the outcome a result_ttl kept after it ended.
        status = self.client.result(jid) if jid else None
        return self.render(request, "job.html", jid=jid, locs=locs, status=status)

    def metrics(self, request: Request) -> Response:
        return Response(metrics.exposition(self.client), media_type=metrics.CONTENT_TYPE)

    # -- actions ---------------------------------------------------------------------------------
    async def checked_form(self, request: Request) -> FormData:
        if self.read_only:
            raise Forbidden("this dashboard is read-only")
        form = await request.form()
        sent = form.get("csrf")
        token = request.session.get("csrf")
        if not isinstance(sent, str) or not isinstance(token, str) or not hmac.compare_digest(
                sent.encode(), token.encode()):
            raise Forbidden("CSRF token missing or wrong: reload the page and try again")
        return form

    def back(self, request: Request, message: str, fallback: str) -> Response:
        request.session["flash"] = message
        ref = request.headers.get("referer", "")
        base = str(request.base_url)
        target = ref if ref.startswith(base) else request.url_for(fallback).path
        return RedirectResponse(target, status_code=303)

    async def busy_action(self, request: Request) -> Response:
        form = await self.checked_form(request)
        action = form.get("action")
        sig = {"quiet": "TSTP", "stop": "TERM"}.get(str(action))
        if sig is None:
            raise ConfigError(f"unknown action {action!r}")
        ident = str(form.get("identity") or "")

        def do() -> int:
            targets = [ident] if ident else [p.identity for p in queries.processes(self.conn, self.keys)]
            for t in targets:
                queries.signal_process(self.conn, self.keys, t, sig)
            return len(targets)

        try:
            n = await run_in_threadpool(do)
        except (NotDeleted, NotRetried) as exc:
            return self.back(request, f"failed: {exc}", "busy")
        return self.back(request, f"asked {n} process{'es' if n != 1 else ''} to {action}", "busy")

    async def queue_action(self, request: Request) -> Response:
        form = await self.checked_form(request)
        action, name = str(form.get("action")), str(form.get("name") or "")

        def do() -> str:
            if action == "pause":
                self.client.pause(name)
                return f"paused {name}"
            if action == "unpause":
                self.client.unpause(name)
                return f"unpaused {name}"
            if action == "clear":
                return f"cleared {name}: deleted {queries.clear_queue(self.conn, self.keys, name):,} jobs"
            if action == "delete":
                queries.delete_queue_job(self.conn, self.keys, name,
                                         str(form.get("payload") or "").encode())
                return f"deleted a job of {name}"
            raise ConfigError(f"unknown action {action!r}")

        try:
            message = await run_in_threadpool(do)
        except (NotDeleted, NotRetried) as exc:
            message = f"failed: {exc}"
        return self.back(request, message, "queues")

    async def set_action(self, request: Request) -> Response:
        which = request.path_params["which"]
        form = await self.checked_form(request)
        action = str(form.get("action"))
        refs = [queries.parse_entry_key(str(k)) for k in form.getlist("key")]

        def do() -> str:
            c = self.client
            if action == "delete":
                return f"deleted {queries.delete_entries(c, which, refs):,} of {len(refs)}"
            if action == "retry" and which == "dead":
                return f"retried {queries.retry_dead(c, refs):,} of {len(refs)}"
            if action in ("retry", "enqueue") and which in ("retries", "scheduled"):
                return f"enqueued {queries.run_now(self.conn, self.keys, which, refs):,} of {len(refs)}"
            if action == "kill" and which in ("retries", "scheduled"):
                return f"killed {queries.kill_entries(self.conn, self.keys, which, refs):,} of {len(refs)}"
            if action == "retry_all" and which == "dead":
                return f"retried {c.retry_all_dead_jobs():,} dead jobs"
            if action == "delete_all" and which == "dead":
                return f"deleted {c.delete_all_dead_jobs():,} dead jobs"
            if action == "delete_all" and which == "retries":
                pipe = self.conn.pipeline(transaction=True)
                pipe.zcard(self.keys.retry)
                pipe.delete(self.keys.retry)
                return f"deleted {int(pipe.execute()[0]):,} retries"
            raise ConfigError(f"unknown action {action!r} for {which}")

        message = await run_in_threadpool(do)
        if form.get("from") == "entry" and action not in ("retry_all", "delete_all"):
            request.session["flash"] = message
            return RedirectResponse(request.url_for("set", which=which).path, status_code=303)
        return self.back(request, message, "overview")


def _page(request: Request) -> int:
    try:
        return max(1, int(request.query_params.get("page", 1)))
    except ValueError:
        return 1


def _pages(total: int) -> int:
    return max(1, math.ceil(total / PER_PAGE))


def _sync(fn: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await run_in_threadpool(fn, request)
    return endpoint


def _sampler(client: Client, stop: threading.Event, interval: float) -> None:
    """Record a per-minute sample while the standalone server runs (history in Redis)."""
    while not stop.wait(interval):
        try:
            queries.record_sample(client)
        except RedisError as exc:
            log.warning("history sample failed: %s", redact(str(exc)))


def create_app(redis: str | redis.Redis | ConnectionSpec | None = None, namespace: str = "forkq", *,
               read_only: bool = False, password: str | None = None, username: str | None = None,
               secret_key: str | None = None, authorize: Callable[[Request], bool] | None = None,
               title: str = "forkq", sampler: bool = True,
               sampler_interval: float = SAMPLER_SECONDS) -> Starlette:
    """The dashboard app for one namespace.

    ``secret_key`` signs the session cookie that holds the CSRF token (env
    ``FORKQ_WEB_SECRET``; a random one per process otherwise, which is fine for one
    server process, and means a restart asks to reload the page before a POST).
    ``sampler``: while the app's lifespan runs (standalone, or a host that runs
    mounted lifespans), a thread writes the per-minute history sample even when
    nobody has the overview open.
    """
    client = Client(redis, namespace)
    dash = Dashboard(client, read_only=read_only, title=title)
    secret = secret_key or env_value("FORKQ_WEB_SECRET") or secrets.token_urlsafe(32)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        stop = threading.Event()
        thread = None
        if sampler:
            thread = threading.Thread(target=_sampler, args=(client, stop, sampler_interval),
                                      name="forkq-web-sampler", daemon=True)
            thread.start()
        try:
            yield
        finally:
            stop.set()
            if thread is not None:
                thread.join(timeout=5)
            client.close()

    async def on_forbidden(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"{exc}\n", status_code=403)

    async def on_bad_input(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"{redact(str(exc))}\n", status_code=400)

    async def on_redis(request: Request, exc: Exception) -> Response:
        return PlainTextResponse(f"Redis at {client.describe()} failed: {redact(str(exc))}\n",
                                 status_code=503)

    which = "{which:str}"
    routes = [
        Route("/", _sync(dash.overview), name="overview"),
        Route("/api/stats", _sync(dash.api_stats), name="api_stats"),
        Route("/api/history", _sync(dash.api_history), name="api_history"),
        Route("/busy", _sync(dash.busy), name="busy"),
        Route("/busy", dash.busy_action, methods=["POST"], name="busy_action"),
        Route("/queues", _sync(dash.queues_page), name="queues"),
        Route("/queues", dash.queue_action, methods=["POST"], name="queue_action"),
        Route("/queue", _sync(dash.queue_page), name="queue"),
        Route("/periodic", _sync(dash.periodic_page), name="periodic"),
        Route("/batches", _sync(dash.batches_page), name="batches"),
        Route("/job", _sync(dash.job_page), name="job"),
        Route("/metrics", _sync(dash.metrics), name="metrics"),
        Route(f"/sets/{which}", _sync(_only_sets(dash.set_page)), name="set"),
        Route(f"/sets/{which}", _only_sets_async(dash.set_action), methods=["POST"], name="set_action"),
        Route(f"/sets/{which}/entry", _sync(_only_sets(dash.entry_page)), name="entry"),
        Mount("/static", app=StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = []
    if password:
        middleware.append(Middleware(BasicAuth, password=password, username=username))
    middleware.append(Middleware(Guard, read_only=read_only, authorize=authorize))
    middleware.append(Middleware(SessionMiddleware, secret_key=secret, session_cookie="forkq_session",
                                 same_site="strict", https_only=False, max_age=None))
    return Starlette(routes=routes, middleware=middleware, lifespan=lifespan,
                     exception_handlers={Forbidden: on_forbidden, ConfigError: on_bad_input,
                                         ForkqError: on_bad_input, RedisError: on_redis})


def _only_sets(fn: Callable[[Request], Response]) -> Callable[[Request], Response]:
    def wrapped(request: Request) -> Response:
        if request.path_params["which"] not in queries.SETS:
            return PlainTextResponse("not found\n", status_code=404)
        return fn(request)
    return wrapped


def _only_sets_async(fn: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
    async def wrapped(request: Request) -> Response:
        if request.path_params["which"] not in queries.SETS:
            return PlainTextResponse("not found\n", status_code=404)
        return await fn(request)
    return wrapped
