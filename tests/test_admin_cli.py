"""The admin verbs of the ``forkq`` command against a real Redis: tables, --json, and
one readable stderr line with a non-zero exit for every kind of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import orjson
import pytest
from helpers import start
from redis_server import free_port, wait_for

import forkq
from forkq import job as jobcodec
from forkq.admin_cli import VERBS, main
from forkq.keys import Keys

NS = "cli"
K = Keys(NS)


def run(capsys, redis_url: str, *argv: str) -> tuple[int, str, str]:
    code = main([argv[0], "--redis", redis_url, "-n", NS, *argv[1:]])
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def run_json(capsys, redis_url: str, *argv: str):  # type: ignore[no-untyped-def]
    code, out, err = run(capsys, redis_url, *argv, "--json")
    assert code == 0, err
    assert err == ""
    return orjson.loads(out)


def assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    assert code != 0
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


def dead_entry(name: str, jid: str, score: float, r) -> None:  # type: ignore[no-untyped-def]
    data = jobcodec.build_payload(name, {"k": 1}, jid=jid)
    data.update(retry_count=3, error_class="ValueError", error_message="nope", failed_at=score)
    r.zadd(K.dead, {jobcodec.encode(data): score})


SUBPROCESS = [sys.executable, "-c",
              "import sys; from forkq.admin_cli import main; sys.exit(main(sys.argv[1:]))"]


def run_process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*SUBPROCESS, *argv], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


# -- stats, queues, enqueue ------------------------------------------------------------------

def test_stats_prints_a_table_and_json(capsys, redis_url, r) -> None:
    forkq.Enqueuer(redis_url, NS).enqueue_many("mail", [{}, {}])
    r.set(K.stat_processed, 41)
    code, out, err = run(capsys, redis_url, "stats")
    assert code == 0 and err == ""
    rows = dict(line.split() for line in out.splitlines()[1:])
    assert rows["processed"] == "41" and rows["enqueued"] == "2" and rows["dead"] == "0"
    data = run_json(capsys, redis_url, "stats")
    assert data["processed"] == 41 and data["enqueued"] == 2 and data["processes"] == 0


def test_queues_lists_count_latency_and_paused(capsys, redis_url) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_many("alpha", [{}] * 3)
    enq.enqueue("beta")
    assert run(capsys, redis_url, "pause", "beta")[0] == 0
    code, out, _ = run(capsys, redis_url, "queues")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["queue", "count", "latency", "paused", "served", "limits", "groups"]
    assert lines[1].split()[:2] == ["alpha", "3"] and lines[1].split()[3] == "no"
    assert lines[2].split()[:2] == ["beta", "1"] and lines[2].split()[3] == "yes"
    data = run_json(capsys, redis_url, "queues")
    assert [(q["job_name"], q["count"], q["paused"]) for q in data] == [("alpha", 3, False), ("beta", 1, True)]
    assert data[0]["latency"] >= 0


def test_queues_says_so_when_there_are_none(capsys, redis_url) -> None:
    assert run(capsys, redis_url, "queues")[:2] == (0, "no queues\n")


def test_enqueue_puts_a_job_with_json_args_on_its_queue(capsys, redis_url, r) -> None:
    code, out, err = run(capsys, redis_url, "enqueue", "send_email", '{"addr": "a@b.c", "n": 2}', "--force")
    assert code == 0 and err == ""
    jid = out.split()[-1]
    (raw,) = r.lrange(K.queue("send_email"), 0, -1)
    data = jobcodec.decode(raw)
    assert data["jid"] == jid and data["args"] == [{"addr": "a@b.c", "n": 2}]
    assert r.sismember(K.queues, "send_email")


def test_enqueue_without_args_sends_an_empty_object(capsys, redis_url, r) -> None:
    data = run_json(capsys, redis_url, "enqueue", "tick", "--force")
    assert data["enqueued"] and data["run_at"] is None
    assert jobcodec.decode(r.lindex(K.queue("tick"), 0))["args"] == [{}]


def test_enqueue_in_schedules_and_unique_skips_a_duplicate(capsys, redis_url, r) -> None:
    before = time.time()
    data = run_json(capsys, redis_url, "enqueue", "digest", '{"u": 1}', "--in", "120", "--unique", "--force")
    assert data["enqueued"] and before + 119 <= data["run_at"] <= time.time() + 121
    assert r.zcard(K.schedule) == 1 and r.llen(K.queue("digest")) == 0
    code, out, err = run(capsys, redis_url, "enqueue", "digest", '{"u": 1}', "--in", "120", "--unique", "--force")
    assert code == 0 and "not enqueued" in out and err == ""
    assert r.zcard(K.schedule) == 1
    code, out, _ = run(capsys, redis_url, "enqueue", "digest", '{"u": 2}', "--in", "5", "--force")
    assert code == 0 and out.startswith("scheduled digest ")
    assert r.zcard(K.schedule) == 2


@pytest.mark.parametrize("args, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    ('"text"', "JSON object"),
    ("null", "JSON object"),
])
def test_enqueue_with_bad_json_fails_in_one_line_and_enqueues_nothing(capsys, redis_url, r, args, needle) -> None:
    assert_one_line_error(*run(capsys, redis_url, "enqueue", "x", args), needle)
    assert r.llen(K.queue("x")) == 0 and not r.exists(K.queues)


@pytest.mark.parametrize("extra, needle", [
    (["--in", "soon"], "--in"),
    (["--in", "-5"], "--in"),
    (["--in", "nan"], "--in"),
])
def test_enqueue_with_a_bad_delay_fails_in_one_line(capsys, redis_url, extra, needle) -> None:
    assert_one_line_error(*run(capsys, redis_url, "enqueue", "x", "{}", *extra), needle)


def test_enqueue_with_a_bad_job_name_fails_in_one_line(capsys, redis_url, r) -> None:
    assert_one_line_error(*run(capsys, redis_url, "enqueue", "bad{name}", "{}"), "bad{name}")
    assert r.dbsize() == 0


def test_enqueue_too_large_a_payload_fails_in_one_line(capsys, redis_url, r) -> None:
    big = orjson.dumps({"blob": "x" * (1024 * 1024 + 10)}).decode()
    assert_one_line_error(*run(capsys, redis_url, "enqueue", "x", big, "--force"), "limit")
    assert r.dbsize() == 0


# -- dead, retries, scheduled -------------------------------------------------------------------

def test_dead_list_shows_newest_first_with_pages(capsys, redis_url, r) -> None:
    for i in range(25):
        dead_entry("mail", f"{i:024x}", 1_700_000_000.0 + i, r)
    code, out, err = run(capsys, redis_url, "dead", "list")
    lines = out.splitlines()
    assert code == 0 and err == ""
    assert lines[0].split() == ["died_at", "jid", "name", "fails", "args", "error"]
    assert f"{24:024x}" in lines[1] and "ValueError: nope" in lines[1] and " 4 " in lines[1]
    assert len(lines) == 1 + 20 + 1 and lines[-1] == "page 1 of 2, 25 total"
    page2 = run_json(capsys, redis_url, "dead", "list", "--page", "2")
    assert page2["total"] == 25 and page2["page"] == 2
    assert [i["id"] for i in page2["items"]] == [f"{i:024x}" for i in range(4, -1, -1)]
    assert page2["items"][0]["died_at"] == 1_700_000_004.0 and page2["items"][0]["args"] == {"k": 1}
    code, out, _ = run(capsys, redis_url, "dead", "list", "--page", "9")
    assert code == 0 and out == "nothing on page 9 (total 25)\n"


@pytest.mark.parametrize("page", ["0", "-2", "two", "1.5"])
def test_a_bad_page_number_fails_in_one_line(capsys, redis_url, page) -> None:
    assert_one_line_error(*run(capsys, redis_url, "dead", "list", "--page", page), "page")
    assert_one_line_error(*run(capsys, redis_url, "retries", "--page", page), "page")


def test_dead_retry_by_jid_requeues_and_unknown_jid_fails(capsys, redis_url, r) -> None:
    dead_entry("mail", "a" * 24, 100.0, r)
    dead_entry("mail", "b" * 24, 200.0, r)
    code, out, err = run(capsys, redis_url, "dead", "retry", "a" * 24)
    assert (code, err) == (0, "") and "a" * 24 in out
    assert r.llen(K.queue("mail")) == 1 and r.zcard(K.dead) == 1
    code, out, err = run(capsys, redis_url, "dead", "retry", "a" * 24)
    assert_one_line_error(code, out, err, "no dead job", "a" * 24)
    assert code == 1


def test_dead_delete_by_jid_and_all(capsys, redis_url, r) -> None:
    for i in range(3):
        dead_entry("mail", f"{i:024x}", float(i), r)
    assert run_json(capsys, redis_url, "dead", "delete", f"{1:024x}") == {"deleted": 1, "jid": f"{1:024x}"}
    assert r.zcard(K.dead) == 2
    assert_one_line_error(*run(capsys, redis_url, "dead", "delete", f"{1:024x}"), "no dead job")
    code, out, _ = run(capsys, redis_url, "dead", "delete", "--all")
    assert code == 0 and out == "deleted 2 dead jobs\n" and r.zcard(K.dead) == 0


def test_dead_retry_all_moves_every_job(capsys, redis_url, r) -> None:
    for i in range(30):
        dead_entry("bulk" if i % 2 else "mail", f"{i:024x}", float(i), r)
    assert run_json(capsys, redis_url, "dead", "retry", "--all") == {"retried": 30, "left": 0}
    assert r.llen(K.queue("bulk")) == 15 and r.llen(K.queue("mail")) == 15


@pytest.mark.parametrize("argv, needle", [
    (["dead", "retry"], "JID or --all"),
    (["dead", "delete", "abc", "--all"], "JID or --all"),
    (["dead", "list", "abc"], "no JID"),
    (["dead", "bury", "abc"], "invalid choice"),
    (["dead"], "required"),
])
def test_dead_misuse_fails_in_one_line(capsys, redis_url, argv, needle) -> None:
    code, out, err = run(capsys, redis_url, *argv)
    assert_one_line_error(code, out, err, needle)
    assert code == 2


def test_retries_and_scheduled_list_soonest_first(capsys, redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    later = enq.enqueue_in("report", 600, {"n": 1})
    sooner = enq.enqueue_in("report", 60, {"n": 2})
    code, out, _ = run(capsys, redis_url, "scheduled")
    lines = out.splitlines()
    assert code == 0 and lines[0].split() == ["run_at", "jid", "name", "fails", "args"]
    assert sooner.job.id in lines[1] and later.job.id in lines[2]
    data = run_json(capsys, redis_url, "scheduled")
    assert [i["id"] for i in data["items"]] == [sooner.job.id, later.job.id]
    assert data["items"][0]["run_at"] == pytest.approx(sooner.run_at)

    failed = jobcodec.build_payload("sync", None, jid="c" * 24)
    failed.update(retry_count=0, error_class="IOError", error_message="timeout", failed_at=1.0)
    r.zadd(K.retry, {jobcodec.encode(failed): 5000.0})
    code, out, _ = run(capsys, redis_url, "retries")
    assert code == 0 and "c" * 24 in out and "IOError: timeout" in out
    data = run_json(capsys, redis_url, "retries")
    assert data["total"] == 1 and data["items"][0]["retry_at"] == 5000.0 and data["items"][0]["fails"] == 1


# -- pause, unpause, workers, pools --------------------------------------------------------------

def test_pause_and_unpause_toggle_the_key_and_unpause_wakes(capsys, redis_url, r) -> None:
    assert run(capsys, redis_url, "pause", "mail", "--force")[:2] == (0, "paused mail\n")
    assert r.exists(K.paused("mail"))
    ps = r.pubsub(ignore_subscribe_messages=True)
    ps.subscribe(K.wake_channel)
    wait_for(lambda: r.pubsub_numsub(K.wake_channel)[0][1] == 1, message="subscription")
    assert run_json(capsys, redis_url, "unpause", "mail") == {"unpaused": "mail"}
    assert not r.exists(K.paused("mail"))
    assert wait_for(lambda: ps.get_message(timeout=0.1), message="wake")["data"] == b"mail"
    ps.close()


def test_pause_without_a_name_fails_in_one_line(capsys, redis_url) -> None:
    assert_one_line_error(*run(capsys, redis_url, "pause"), "name")


def test_workers_and_pools_show_a_running_job(capsys, redis_url, fast_config, pools) -> None:
    pool = forkq.WorkerPool(NS, config=fast_config)
    release = threading.Event()
    running = threading.Event()

    @pool.job
    def crunch(job: forkq.Job) -> None:
        job.checkin("step 3 of 7")
        running.set()
        release.wait(30)

    start(pools, pool, redis_url, concurrency=3)
    try:
        queued = pool.enqueuer(redis_url).enqueue("crunch", {"size": 9})
        assert running.wait(10)

        def busy():  # type: ignore[no-untyped-def]
            return [w for w in run_json(capsys, redis_url, "workers") if w["is_busy"]]

        (w,) = wait_for(lambda: busy() and busy()[0]["checkin"] == "step 3 of 7" and busy(),
                        message="observation with checkin")
        assert (w["job_name"], w["job_id"], orjson.loads(w["args_json"])) == ("crunch", queued.id, {"size": 9})
        code, out, _ = run(capsys, redis_url, "workers")
        lines = out.splitlines()
        assert code == 0 and len(lines) == 1 + 3
        assert sum(" yes " in line for line in lines) == 1 and "step 3 of 7" in out
        code, out, _ = run(capsys, redis_url, "workers", "--busy")
        assert code == 0 and len(out.splitlines()) == 2 and queued.id in out
        rt = pool.runtime
        assert rt is not None
        (p,) = run_json(capsys, redis_url, "pools")
        assert (p["worker_pool_id"], p["concurrency"], p["job_names"], p["pid"]) == (
            rt.identity, 3, ["crunch"], os.getpid())
        code, out, _ = run(capsys, redis_url, "pools")
        assert code == 0 and rt.identity in out and out.splitlines()[0].split()[:4] == [
            "pool", "host", "pid", "concurrency"]
    finally:
        release.set()


def test_workers_and_pools_with_nothing_running(capsys, redis_url) -> None:
    assert run(capsys, redis_url, "workers")[:2] == (0, "no workers\n")
    assert run(capsys, redis_url, "pools")[:2] == (0, "no pools\n")
    assert run_json(capsys, redis_url, "workers") == []


# -- options and errors --------------------------------------------------------------------------

def test_namespace_and_url_come_from_the_environment(capsys, redis_url, r, monkeypatch) -> None:
    forkq.Enqueuer(redis_url, "envns").enqueue("x")
    monkeypatch.setenv("FORKQ_REDIS_URL", redis_url)
    monkeypatch.setenv("FORKQ_NAMESPACE", "envns")
    assert main(["stats", "--json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["enqueued"] == 1


def test_unknown_or_missing_verb_fails_in_one_line(capsys) -> None:
    code = main(["frobnicate"])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, "unknown verb", "frobnicate")
    code = main([])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, "no admin verb")


def test_help_exits_zero(capsys) -> None:
    assert main(["dead", "--help"]) == 0
    assert "dead list" in capsys.readouterr().out


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_reports_an_unreachable_redis_in_one_line(capsys, verb) -> None:
    url = f"redis://admin:hunter2@127.0.0.1:{free_port()}/0"
    extra = {"enqueue": ["x", "{}"], "dead": ["list"], "pause": ["x"], "unpause": ["x"],
             "cancel": ["jid1"], "result": ["jid1"], "repair-groups": ["x"]}.get(verb, [])
    code = main([verb, "--redis", url, *extra])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, "cannot reach Redis", "127.0.0.1")
    assert code == 5 and "hunter2" not in cap.err


@pytest.mark.parametrize("url, needle", [
    ("http://user:hunter2@localhost/0", "scheme"),
    ("redis://user:hunter2@:6379/0", "no host"),
    ("redis://user:hunter2@localhost:port/0", "port"),
])
def test_a_bad_url_fails_in_one_line_without_its_password(capsys, url, needle) -> None:
    code = main(["stats", "--redis", url])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, needle)
    assert code == 2 and "hunter2" not in cap.err


def test_a_bad_namespace_fails_in_one_line(capsys, redis_url) -> None:
    code = main(["stats", "--redis", redis_url, "-n", "a{b}"])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, "namespace")


def test_wrong_password_fails_in_one_line(capsys, redis_server) -> None:
    # The test server has no user "admin": Redis itself refuses the AUTH.
    code = main(["stats", "--redis", f"redis://admin:hunter2@127.0.0.1:{redis_server.port}/0"])
    cap = capsys.readouterr()
    assert_one_line_error(code, cap.out, cap.err, "Redis")
    assert code == 1 and "hunter2" not in cap.err


# -- as a real process -----------------------------------------------------------------------------

def test_subprocess_enqueue_then_stats_json(redis_url) -> None:
    done = run_process("enqueue", "mail", '{"to": "x"}', "--redis", redis_url, "-n", NS, "--force")
    assert done.returncode == 0 and done.stderr == "" and done.stdout.startswith("enqueued mail ")
    stats = run_process("stats", "--json", env={"FORKQ_REDIS_URL": redis_url, "FORKQ_NAMESPACE": NS})
    assert stats.returncode == 0 and orjson.loads(stats.stdout)["enqueued"] == 1


def test_subprocess_bad_json_is_one_stderr_line_and_exit_2(redis_url) -> None:
    done = run_process("enqueue", "mail", "{oops", "--redis", redis_url)
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "not valid JSON" in done.stderr


def test_subprocess_unreachable_redis_is_one_stderr_line_and_exit_5() -> None:
    done = run_process("queues", "--redis", f"redis://u:hunter2@127.0.0.1:{free_port()}/0")
    assert done.returncode == 5 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "cannot reach Redis" in done.stderr and "hunter2" not in done.stderr


def test_subprocess_unknown_jid_is_one_stderr_line_and_exit_1(redis_url) -> None:
    done = run_process("dead", "retry", "f" * 24, "--redis", redis_url)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "no dead job" in done.stderr


def test_subprocess_redis_embedded_points_at_the_embedded_servers_socket(tmp_path) -> None:
    done = run_process("stats", "--redis", "embedded", env={"FORKQ_EMBEDDED_DIR": str(tmp_path)})
    assert done.returncode == 5 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1
    assert "cannot reach Redis" in done.stderr and str(tmp_path / "redis.sock") in done.stderr


# -- repair-groups ---------------------------------------------------------------------------

def test_repair_groups_gives_a_group_whose_token_was_deleted_its_turn_back(capsys, redis_url, r) -> None:
    enq = forkq.Enqueuer(redis_url, NS)
    enq.enqueue_many("work", [{"i": i} for i in range(3)], group="tenant-a")
    enq.enqueue_many("work", [{"i": i} for i in range(2)], group="tenant-b")
    r.lrem(K.queue("work"), 0, jobcodec.group_token("work", "tenant-a"))  # Sidekiq Web's delete
    code, out, err = run(capsys, redis_url, "repair-groups", "work")
    assert code == 0 and err == ""
    assert out == "gave 1 fair group of work their turn back\n"
    tokens = sorted(jobcodec.token_group(t) for t in r.lrange(K.queue("work"), 0, -1))
    assert tokens == ["tenant-a", "tenant-b"]
    assert run_json(capsys, redis_url, "repair-groups", "work") == {"name": "work", "repaired": 0}
    code, out, err = run(capsys, redis_url, "repair-groups", "work")
    assert code == 0 and "nothing to repair" in out


def test_repair_groups_refuses_a_bad_job_name_in_one_line(capsys, redis_url) -> None:
    code, out, err = run(capsys, redis_url, "repair-groups", "bad name\n")
    assert_one_line_error(code, out, err)
    assert code == 2
