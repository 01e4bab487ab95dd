"""The dashboard over plain HTTP: CSRF, read-only, password, /metrics, mounting, the CLI.

Real ``forkq web`` processes (and a real host app under uvicorn) on loopback
ports, stopped by pid; real Redis with data made by real pools.
"""

from __future__ import annotations

import base64
import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import orjson
import pytest
import redis
from redis_server import ROOT, RedisServer, free_port, wait_for
from web_support import NS, WebServer, produce, start_web

import forkq
from forkq.keys import Keys

pytest.importorskip("starlette")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

K = Keys(NS)


class Session:
    """A cookie-keeping HTTP client, like a browser tab."""

    def __init__(self, base: str, headers: dict[str, str] | None = None) -> None:
        self.base = base
        self.headers = headers or {}
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar),
                                                  _NoRedirect())

    def request(self, path: str, data: dict[str, str] | list[tuple[str, str]] | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, str, dict[str, str]]:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base + path, data=body,
                                     headers={**self.headers, **(headers or {})})
        try:
            with self.opener.open(req, timeout=10) as resp:
                return resp.status, resp.read().decode(), {k.lower(): v for k, v in resp.headers.items()}
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(), {k.lower(): v for k, v in exc.headers.items()}

    def csrf(self, path: str = "/queues") -> str:
        status, body, _ = self.request(path)
        assert status == 200, body
        m = re.search(r'name="csrf" value="([^"]+)"', body)
        assert m, "page has no CSRF field"
        return m.group(1)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[WebServer]:
    s = start_web(redis_server.url)
    yield s
    s.stop()


def _enqueue(url: str, name: str, n: int) -> None:
    enq = forkq.Enqueuer(url, NS)
    enq.enqueue_many(name, [{"n": i} for i in range(n)])
    enq.close()


def test_a_post_without_the_csrf_token_or_with_a_wrong_one_is_refused(
        server: WebServer, redis_url: str, r: redis.Redis) -> None:
    _enqueue(redis_url, "mail", 3)
    s = Session(server.url)
    token = s.csrf()
    status, body, _ = s.request("/queues", {"action": "clear", "name": "mail"})
    assert status == 403 and "CSRF" in body
    status, body, _ = s.request("/queues", {"action": "clear", "name": "mail", "csrf": token + "x"})
    assert status == 403
    # Another browser's token (another session) does not work either.
    other = Session(server.url).csrf()
    status, _, _ = s.request("/queues", {"action": "clear", "name": "mail", "csrf": other})
    assert status == 403
    assert r.llen(K.queue("mail")) == 3
    status, _, headers = s.request("/queues", {"action": "pause", "name": "mail", "csrf": token})
    assert status == 303
    assert r.exists(K.paused("mail")) == 1


def test_job_page_shows_the_state_and_kept_result_by_jid(
        server: WebServer, redis_url: str, fast_config: forkq.Config, r: redis.Redis) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)

    @pool.job(result_ttl=60)
    def thumbnail(job: forkq.Job) -> dict:
        return {"width": 640}

    enq = pool.enqueuer(redis_url)
    job = enq.enqueue("thumbnail", {})
    s = Session(server.url)
    _, body, _ = s.request(f"/job?jid={job.id}")
    assert 'data-state="queued">queued<' in body
    pool.start(redis_url, concurrency=1)
    try:
        enq.wait(job.id, timeout=20)
    finally:
        pool.stop(timeout=2)
        enq.close()
    _, body, _ = s.request(f"/job?jid={job.id}")
    assert 'data-state="succeeded">succeeded<' in body
    assert 'id="job-result"' in body and "640" in body


def test_bulk_actions_over_http_apply_to_exactly_the_posted_entries(
        server: WebServer, redis_url: str, fast_config: forkq.Config, r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=4, retries=2)
    s = Session(server.url)
    token = s.csrf("/sets/dead")
    _, body, _ = s.request("/sets/dead")
    keys = re.findall(r'name="key" value="([^"]+)"', body)
    assert len(keys) == 4
    status, _, _ = s.request("/sets/dead", [("csrf", token), ("action", "delete"),
                                            ("key", keys[0]), ("key", keys[1])])
    assert status == 303 and r.zcard(K.dead) == 2
    # Kill moves retries to dead.
    _, body, _ = s.request("/sets/retries")
    rkeys = re.findall(r'name="key" value="([^"]+)"', body)
    status, _, _ = s.request("/sets/retries", [("csrf", token), ("action", "kill"), ("key", rkeys[0])])
    assert status == 303 and r.zcard(K.retry) == 1 and r.zcard(K.dead) == 3
    # Retry all dead.
    status, _, _ = s.request("/sets/dead", [("csrf", token), ("action", "retry_all")])
    assert status == 303 and r.zcard(K.dead) == 0 and r.llen(K.queue("boom")) == 3
    # A scheduled job enqueued now keeps its jid and arguments.
    enq = forkq.Enqueuer(redis_url, NS)
    sj = enq.enqueue_in("report", 3600, {"week": 7})
    enq.close()
    _, body, _ = s.request("/sets/scheduled")
    (skey,) = re.findall(r'name="key" value="([^"]+)"', body)
    status, _, _ = s.request("/sets/scheduled", [("csrf", token), ("action", "enqueue"), ("key", skey)])
    assert status == 303 and r.zcard(K.schedule) == 0
    (queued,) = [forkq.job.decode(m) for m in r.lrange(K.queue("report"), 0, -1)]
    assert queued["jid"] == sj.job.id and queued["args"] == [{"week": 7}]
    # A key that is no longer there changes nothing and says so.
    status, _, _ = s.request("/sets/scheduled", [("csrf", token), ("action", "delete"), ("key", skey)])
    assert status == 303
    _, body, _ = s.request("/sets/scheduled")
    assert "deleted 0 of 1" in body


def test_read_only_refuses_every_post_even_with_a_valid_token(
        redis_server: RedisServer, redis_url: str, fast_config: forkq.Config, r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=1)
    _enqueue(redis_url, "mail", 2)
    ro = start_web(redis_server.url, "--read-only")
    try:
        s = Session(ro.url)
        status, body, _ = s.request("/queues")
        assert status == 200 and 'name="csrf"' not in body and "read-only" in body
        for path, form in (("/queues", {"action": "clear", "name": "mail"}),
                           ("/sets/dead", {"action": "delete_all"}),
                           ("/busy", {"action": "stop"})):
            status, body, _ = s.request(path, form)
            assert status == 403 and "read-only" in body
        assert r.llen(K.queue("mail")) == 2 and r.zcard(K.dead) == 1
    finally:
        ro.stop()


def test_password_protects_every_page_static_file_and_metrics(redis_server: RedisServer,
                                                               redis_url: str) -> None:
    # From the environment: a password on the command line would show in `ps`.
    web = start_web(redis_server.url, env={"FORKQ_WEB_PASSWORD": "s3cret"})
    try:
        for path in ("/", "/metrics", "/static/app.js", "/api/stats"):
            status, _, headers = Session(web.url).request(path)
            assert status == 401, path
            assert headers.get("www-authenticate", "").startswith("Basic")
        wrong = base64.b64encode(b"ops:nope").decode()
        status, _, _ = Session(web.url, {"Authorization": f"Basic {wrong}"}).request("/")
        assert status == 401
        good = base64.b64encode(b"ops:s3cret").decode()
        status, body, _ = Session(web.url, {"Authorization": f"Basic {good}"}).request("/")
        assert status == 200 and "Overview" in body
    finally:
        web.stop()


def test_metrics_parse_with_prometheus_client_and_equal_redis(
        server: WebServer, redis_url: str, fast_config: forkq.Config, r: redis.Redis,
        pools: list[forkq.WorkerPool]) -> None:
    produce(redis_url, fast_config, dead=3, retries=2)
    _enqueue(redis_url, "mail", 5)
    _enqueue(redis_url, "sms", 2)
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_in("later", 900, {})
    enq.close()
    idle = forkq.WorkerPool(NS, config=fast_config)
    idle.register("mail", lambda job: None)
    r.set(K.paused("mail"), b"1")  # served but paused: its 5 jobs stay queued
    idle.start(redis_url, concurrency=1)
    pools.append(idle)
    wait_for(lambda: r.scard(K.processes) == 1, timeout=10, message="the pool's beat")
    status, body, headers = Session(server.url).request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    fams = {f.name: f for f in text_string_to_metric_families(body)}
    sizes = {s.labels["queue"]: s.value for s in fams["forkq_queue_size"].samples}
    assert sizes["mail"] == r.llen(K.queue("mail")) == 5
    assert sizes["sms"] == r.llen(K.queue("sms")) == 2
    assert set(sizes) == {m.decode() for m in r.smembers(K.queues)}
    served = {s.labels["queue"]: s.value for s in fams["forkq_queue_pools"].samples}
    assert served["mail"] == 1 and served["sms"] == 0
    lat = {s.labels["queue"]: s.value for s in fams["forkq_queue_latency_seconds"].samples}
    assert lat["mail"] >= 0 and lat["boom"] == 0
    one = {n: fams[n].samples[0].value for n in ("forkq_scheduled_size", "forkq_retry_size",
                                                 "forkq_dead_size", "forkq_processes")}
    assert one == {"forkq_scheduled_size": r.zcard(K.schedule), "forkq_retry_size": 2,
                   "forkq_dead_size": 3, "forkq_processes": 1}


def test_history_samples_are_kept_in_redis_once_per_minute_and_served(
        server: WebServer, redis_url: str, r: redis.Redis) -> None:
    _enqueue(redis_url, "mail", 4)
    s = Session(server.url)
    for _ in range(3):
        status, _, _ = s.request("/api/stats")
        assert status == 200
    fields = r.hkeys(K.web_history())
    assert len(fields) in (1, 2)  # one per minute (two if a minute ended meanwhile)
    status, body, _ = s.request("/api/history?minutes=5")
    h = orjson.loads(body)
    assert h["samples"] and h["samples"][-1]["e"] == 4
    assert h["samples"][-1]["q"]["mail"][0] == 4
    assert len(h["days"]) == 30


def test_mounted_in_a_host_app_under_a_prefix_behind_the_hosts_auth(
        redis_server: RedisServer, redis_url: str, r: redis.Redis) -> None:
    _enqueue(redis_url, "mail", 1)
    port = free_port()
    env = {**os.environ, "FORKQ_REDIS_URL": redis_server.url, "FORKQ_NAMESPACE": NS,
           "PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "web_host_app:app", "--host",
                             "127.0.0.1", "--port", str(port), "--log-level", "warning"],
                            cwd=str(ROOT), env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        host = f"http://127.0.0.1:{port}"
        staff = Session(host, {"X-Staff": "yes"})
        wait_for(lambda: _answers(host), timeout=30, interval=0.1, message="the host app")
        assert Session(host).request("/forkq/")[0] == 403  # the host's rule said no
        status, body, _ = staff.request("/forkq/queues")
        assert status == 200
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', body)
        assert links and all(link.startswith("/forkq/") for link in links), links
        assert staff.request("/forkq/static/app.js")[0] == 200
        token = staff.csrf("/forkq/queues")
        status, _, headers = staff.request("/forkq/queues", {"csrf": token, "action": "pause",
                                                             "name": "mail"})
        assert status == 303 and headers["location"].startswith("/forkq/")
        assert r.exists(K.paused("mail")) == 1
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def _answers(base: str) -> bool:
    try:
        urllib.request.urlopen(base + "/", timeout=2).close()
        return True
    except OSError:
        return False


def test_behind_a_proxy_with_root_path_every_link_carries_the_prefix(redis_server: RedisServer,
                                                                      redis_url: str) -> None:
    web = start_web(redis_server.url, root_path="/ops/forkq")
    try:
        # The proxy strips the prefix: the server is asked for "/", its links say the prefix.
        status, body, _ = Session(f"http://127.0.0.1:{web.port}").request("/sets/dead")
        assert status == 200
        links = re.findall(r'(?:href|src|action)="(/[^"]*)"', body)
        assert links and all(link.startswith("/ops/forkq/") for link in links), links
    finally:
        web.stop()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forkq", "web", *args], cwd=str(ROOT),
                          env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=60)


def test_cli_mistakes_print_one_line_and_exit_non_zero(redis_server: RedisServer) -> None:
    res = _cli("--bind", "nonsense")
    assert res.returncode == 2 and res.stderr.count("\n") == 1 and "HOST:PORT" in res.stderr
    res = _cli("--bind", "127.0.0.1:99999")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        res = _cli("--bind", f"127.0.0.1:{busy}", "--redis", redis_server.url)
    assert res.returncode == 1 and res.stderr.count("\n") == 1 and "cannot listen" in res.stderr
    dead_port = free_port()
    res = _cli("--bind", f"127.0.0.1:{free_port()}", "--redis", f"redis://:pw@127.0.0.1:{dead_port}/0")
    assert res.returncode == 5 and res.stderr.count("\n") == 1 and "cannot reach Redis" in res.stderr
    assert "pw" not in res.stderr
    res = _cli("--bind", f"127.0.0.1:{free_port()}", "--redis", redis_server.url, "-n", "bad{ns}")
    assert res.returncode == 2 and res.stderr.count("\n") == 1


def test_cli_without_the_web_extra_says_how_to_install_it() -> None:
    # A fresh interpreter where the extra's packages cannot be imported.
    code = ("import sys, importlib.abc\n"
            "class Block(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path, target=None):\n"
            "        if name.split('.')[0] in ('starlette', 'uvicorn'):\n"
            "            raise ModuleNotFoundError(name)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Block())\n"
            "from forkq.cli import main\n"
            "sys.exit(main(['web']))\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(ROOT), capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "pip install 'forkq[web]'" in res.stderr
