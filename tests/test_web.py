"""The dashboard in a real headless Chromium (Selenium), on a real ``forkq web`` process.

One browser and one server per module; each test makes its own data with real
pools and checks what the page shows against Redis, and what each button does
to Redis.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
import redis
from redis_server import RedisServer, wait_for
from web_support import NS, Gate, WebServer, produce, slow_pool, start_web

import forkq
from forkq.keys import Keys

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                                reason="needs Debian's chromium and chromium-driver")

K = Keys(NS)


def make_browser(profile: str) -> webdriver.Chrome:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def server(redis_server: RedisServer) -> Iterator[WebServer]:
    s = start_web(redis_server.url)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[webdriver.Chrome]:
    profile = tempfile.mkdtemp(prefix="forkq-chromium-")
    driver = make_browser(profile)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def client(redis_url: str) -> Iterator[forkq.Client]:
    c = forkq.Client(redis_url, NS)
    yield c
    c.close()


def console_errors(driver: webdriver.Chrome) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def open_page(driver: webdriver.Chrome, url: str) -> None:
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    WebDriverWait(driver, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def text(driver: webdriver.Chrome, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def number(driver: webdriver.Chrome, css: str) -> int:
    return int(text(driver, css).replace(",", ""))


def _mark(driver: webdriver.Chrome) -> None:
    driver.execute_script("window.__forkqOldPage = true;")


def _wait_new_page(driver: webdriver.Chrome) -> None:
    """Until the marked page was replaced by a fully loaded new one."""
    def loaded(d: webdriver.Chrome) -> bool:
        try:
            return bool(d.execute_script(
                "return window.__forkqOldPage === undefined && document.readyState === 'complete'"))
        except WebDriverException:  # between two documents
            return False
    WebDriverWait(driver, 10).until(loaded)


def click_and_confirm(driver: webdriver.Chrome, css: str) -> None:
    """Click a button that asks for confirmation, accept it, wait for the next page."""
    _mark(driver)
    driver.find_element(By.CSS_SELECTOR, css).click()
    WebDriverWait(driver, 5).until(EC.alert_is_present()).accept()
    _wait_new_page(driver)


def click(driver: webdriver.Chrome, css: str) -> None:
    _mark(driver)
    driver.find_element(By.CSS_SELECTOR, css).click()
    _wait_new_page(driver)


# ---------------------------------------------------------------------------


def test_every_page_loads_without_console_errors_and_overview_numbers_match_redis(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        client: forkq.Client) -> None:
    produce(redis_url, fast_config, dead=3, retries=2)
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_many("waiting", [{"n": i} for i in range(7)])
    enq.enqueue_in("later", 3600, {"x": 1})
    enq.close()
    open_page(browser, server.url + "/")
    st = client.stats()
    assert number(browser, "#stat-dead") == st.dead == 3
    assert number(browser, "#stat-retry") == st.retry == 2
    assert number(browser, "#stat-enqueued") == st.enqueued == 7
    assert number(browser, "#stat-scheduled") == st.scheduled == 1
    assert number(browser, "#stat-processed") == st.processed
    assert number(browser, "#stat-failed") == st.failed
    # The charts drew (uPlot canvases) from the history endpoint and the live poll.
    WebDriverWait(browser, 15).until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#charts canvas")) >= 5)
    # The overview recorded this minute's sample in Redis (history is not in the server).
    r = client.connection
    assert r.hlen(K.web_history()) >= 1
    assert console_errors(browser) == []
    for path in ("/busy", "/queues", "/queue?name=waiting", "/sets/scheduled", "/sets/retries",
                 "/sets/dead", "/periodic", "/batches", "/job?jid=nothing"):
        open_page(browser, server.url + path)
        assert browser.find_element(By.TAG_NAME, "h2").text, path
        assert console_errors(browser) == [], path
    open_page(browser, server.url + "/queue?name=waiting")
    assert number(browser, "#queue-total") == 7
    assert len(browser.find_elements(By.CSS_SELECTOR, "#queue-jobs tbody tr")) == 7


def test_dead_page_lists_newest_first_and_bulk_retry_moves_the_selected_jobs_to_their_queue(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        client: forkq.Client, r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=5)
    open_page(browser, server.url + "/sets/dead")
    assert number(browser, "#set-size") == 5
    rows = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr")
    newest = [m.decode() for m in r.zrevrange(K.dead, 0, -1)]
    shown = [row.get_attribute("data-jid") for row in rows]
    assert shown == [forkq.job.jid_of(m.encode()) for m in newest]
    picks = browser.find_elements(By.CSS_SELECTOR, "input.pick")
    picks[0].click()
    picks[1].click()
    chosen = set(shown[:2])
    click_and_confirm(browser, "#bulk-retry")
    assert "retried 2 of 2" in text(browser, "#flash")
    assert r.zcard(K.dead) == 3
    queued = {forkq.job.jid_of(m) for m in r.lrange(K.queue("boom"), 0, -1)}
    assert queued == chosen
    assert len(browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr")) == 3
    assert console_errors(browser) == []


def test_dead_job_detail_shows_its_traceback_and_delete_removes_it(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=2)
    open_page(browser, server.url + "/sets/dead")
    jid = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr")[0].get_attribute("data-jid")
    click(browser, f'#entries tr[data-jid="{jid}"] td a')
    assert text(browser, "#entry-jid") == jid
    bt = text(browser, "#backtrace")
    assert "in `boom'" in bt  # the failing handler's frame, from error_backtrace
    assert "ValueError" in text(browser, "#entry")
    click_and_confirm(browser, "#entry-delete")
    assert "deleted 1 of 1" in text(browser, "#flash")
    assert r.zcard(K.dead) == 1
    assert all(forkq.job.jid_of(m) != jid for m in r.zrange(K.dead, 0, -1))


def test_search_finds_jobs_by_text_in_args_and_bulk_delete_needs_confirmation(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=12)
    open_page(browser, server.url + "/sets/dead")
    box = browser.find_element(By.ID, "search")
    box.send_keys('"i":11')
    click(browser, ".search button")
    rows = browser.find_elements(By.CSS_SELECTOR, "#entries tbody tr[data-jid]")
    assert len(rows) == 1
    assert '"i":11' in rows[0].text
    # Dismissing the confirmation does nothing.
    browser.find_element(By.ID, "select-all").click()
    browser.find_element(By.ID, "bulk-delete").click()
    WebDriverWait(browser, 5).until(EC.alert_is_present()).dismiss()
    assert r.zcard(K.dead) == 12
    click_and_confirm(browser, "#bulk-delete")
    assert r.zcard(K.dead) == 11
    assert not any(b'"i":11' in m for m in r.zrange(K.dead, 0, -1))


def test_retries_retry_now_enqueues_the_job_with_its_failure_count(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        r: redis.Redis) -> None:
    produce(redis_url, fast_config, retries=3)
    open_page(browser, server.url + "/sets/retries")
    assert number(browser, "#set-size") == 3
    browser.find_element(By.ID, "select-all").click()
    click_and_confirm(browser, "#bulk-retry")
    assert "enqueued 3 of 3" in text(browser, "#flash")
    assert r.zcard(K.retry) == 0
    queued = [forkq.job.decode(m) for m in r.lrange(K.queue("boom"), 0, -1)]
    assert len(queued) == 3 and all(d["retry_count"] == 0 for d in queued)


def test_queues_page_pause_unpause_and_clear_change_redis(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, r: redis.Redis) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_many("mail", [{"n": i} for i in range(4)])
    enq.close()
    open_page(browser, server.url + "/queues")
    row = '#queues tr[data-queue="mail"]'
    assert text(browser, row + " .qsize") == "4"
    assert "no live pool" in text(browser, row + " .served")
    click(browser, row + " button.pause")
    assert r.exists(K.paused("mail")) == 1
    assert "paused" in text(browser, row + " .state")
    click(browser, row + " button.unpause")
    assert r.exists(K.paused("mail")) == 0
    click_and_confirm(browser, row + " button.clear")
    assert r.llen(K.queue("mail")) == 0
    assert "deleted 4 jobs" in text(browser, "#flash")


def test_busy_page_shows_running_jobs_and_quiet_reaches_the_pool(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        r: redis.Redis, pools: list[forkq.WorkerPool]) -> None:
    gate = Gate()
    pool = slow_pool(fast_config, gate)
    enq = pool.enqueuer(redis_url)
    jobs = [enq.enqueue("slow", {"n": i}) for i in range(2)]
    enq.close()
    pool.start(redis_url, concurrency=3)
    pools.append(pool)
    try:
        ident = wait_for(lambda: [m.decode() for m in r.smembers(K.processes)], timeout=10,
                         message="the pool's process entry")[0]
        wait_for(lambda: len(r.hgetall(K.process_work(ident))) == 2, timeout=10,
                 message="both jobs in the pool's :work hash")
        open_page(browser, server.url + "/busy")
        assert number(browser, "#busy-processes") == 1
        assert number(browser, "#busy-threads") == 3
        assert number(browser, "#busy-busy") == 2
        running = text(browser, "#running")
        for j in jobs:
            assert j.id in running
        assert '"n":0' in running and '"n":1' in running
        # The queue is served by a live pool.
        open_page(browser, server.url + "/queues")
        assert "1 live pool" in text(browser, '#queues tr[data-queue="slow"] .served')
        open_page(browser, server.url + "/busy")
        click_and_confirm(browser, f'#processes tr[data-identity="{ident}"] button.quiet')
        assert "asked 1 process to quiet" in text(browser, "#flash")
        wait_for(lambda: r.hget(K.process(ident), "quiet") == b"true", timeout=10,
                 message="the pool to beat quiet=true")
        open_page(browser, server.url + "/busy")
        assert browser.find_elements(By.CSS_SELECTOR, ".quiet-badge")
        assert console_errors(browser) == []
    finally:
        gate.event.set()


def test_job_by_jid_says_where_the_job_is(server: WebServer, browser: webdriver.Chrome,
                                          redis_url: str, fast_config: forkq.Config,
                                          r: redis.Redis) -> None:
    produce(redis_url, fast_config, dead=1)
    dead_jid = forkq.job.jid_of(r.zrange(K.dead, 0, 0)[0])
    enq = forkq.Enqueuer(redis_url, NS)
    queued = enq.enqueue("waiting", {"a": 1})
    sched = enq.enqueue_in("later", 600, {"b": 2})
    enq.close()
    for jid, state in ((dead_jid, "dead"), (queued.id, "queued"), (sched.job.id, "scheduled")):
        open_page(browser, f"{server.url}/job?jid={jid}")
        states = [e.get_attribute("data-state") for e in browser.find_elements(By.CSS_SELECTOR, "tr.loc")]
        assert states == [state], jid
    open_page(browser, f"{server.url}/job?jid=000000000000000000000000")
    assert browser.find_elements(By.ID, "not-found")


def test_periodic_page_lists_pre_scheduled_occurrences(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        r: redis.Redis, pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    pool.register("report", lambda job: None)
    pool.periodically_enqueue("0 * * * * *", "report")  # every minute
    pool.start(redis_url, concurrency=1)
    pools.append(pool)
    wait_for(lambda: any(b'"jid":"periodic:report:' in m for m in r.zrange(K.schedule, 0, -1)),
             timeout=15, message="an occurrence of report in schedule")
    open_page(browser, server.url + "/periodic")
    row = text(browser, '#periodic tr[data-name="report"]')
    first = min(float(s) for m, s in r.zrange(K.schedule, 0, -1, withscores=True)
                if b"periodic:report:" in m)
    assert time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(first)) in row


def test_read_only_dashboard_shows_no_action(redis_server: RedisServer, browser: webdriver.Chrome,
                                             redis_url: str, fast_config: forkq.Config) -> None:
    produce(redis_url, fast_config, dead=1)
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue("mail", {})
    enq.close()
    ro = start_web(redis_server.url, "--read-only")
    try:
        for path in ("/sets/dead", "/queues", "/busy", "/sets/retries", "/sets/scheduled"):
            open_page(browser, ro.url + path)
            assert browser.find_elements(By.ID, "read-only")
            assert not browser.find_elements(By.CSS_SELECTOR, "main form[method=post]"), path
            assert not browser.find_elements(By.CSS_SELECTOR, "main button[name=action]"), path
    finally:
        ro.stop()



def test_batches_page_shows_counts_and_callback_states(
        server: WebServer, browser: webdriver.Chrome, redis_url: str, fast_config: forkq.Config,
        pools: list[forkq.WorkerPool]) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    pool.register("part", lambda job: None)
    pool.register("finished", lambda job: None)
    with pool.enqueuer(redis_url).batch(on_success="finished", description="web check") as done_batch:
        done_batch.enqueue_many("part", [{"i": i} for i in range(4)])
    pool.start(redis_url, concurrency=2)
    pools.append(pool)
    c = forkq.Client(redis_url, NS)
    wait_for(lambda: (s := c.batch(done_batch.bid)) is not None and s.success_at is not None, 15,
             message="the batch finished")
    pool.stop(timeout=5)
    with forkq.Enqueuer(redis_url, NS).batch(on_complete="finished") as waiting:
        waiting.enqueue_many("part", [{"i": i} for i in range(3)])
    open_page(browser, server.url + "/batches")
    row = browser.find_element(By.CSS_SELECTOR, f'#batches tr[data-bid="{done_batch.bid}"]')
    assert row.get_attribute("data-pending") == "0"
    assert "web check" in row.text and "finished: enqueued" in row.text
    row = browser.find_element(By.CSS_SELECTOR, f'#batches tr[data-bid="{waiting.bid}"]')
    assert row.get_attribute("data-pending") == "3" and "finished: waiting" in row.text
    open_page(browser, f"{server.url}/batches?bid={waiting.bid}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#batches tr[data-bid]")) == 1
    open_page(browser, f"{server.url}/batches?bid=nosuch")
    assert browser.find_elements(By.ID, "no-batches")
    c.close()
