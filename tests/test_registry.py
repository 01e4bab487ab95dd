"""Registration errors are clear and immediate."""

from __future__ import annotations

import pytest

import forkq


@pytest.mark.parametrize("opts", [
    {"priority": 0}, {"priority": 10001}, {"max_fails": 0}, {"max_concurrency": -1},
    {"timeout": 0}, {"backoff": 5},
])
def test_bad_job_options_raise_config_error(opts: dict) -> None:
    pool = forkq.WorkerPool("t")
    with pytest.raises(forkq.ConfigError):
        pool.job(**opts)(lambda job: None)


@pytest.mark.parametrize("name", ["", "a{b}", "x\ny", "q" * 201])
def test_bad_job_names_raise_config_error(name: str) -> None:
    pool = forkq.WorkerPool("t")
    with pytest.raises(forkq.ConfigError):
        pool.register(name, lambda job: None)


def test_duplicate_job_name_is_rejected() -> None:
    pool = forkq.WorkerPool("t")
    pool.register("a", lambda job: None)
    with pytest.raises(forkq.ConfigError, match="twice"):
        pool.register("a", lambda job: None)


def test_bare_and_named_decorators_register_by_name() -> None:
    pool = forkq.WorkerPool("t")

    @pool.job
    def first(job: forkq.Job) -> None: ...

    @pool.job("other_name", priority=5)
    def second(job: forkq.Job) -> None: ...

    assert set(pool.jobs) == {"first", "other_name"}
    assert pool.jobs["other_name"].options.priority == 5


def test_start_without_jobs_is_a_clear_error(redis_url: str) -> None:
    with pytest.raises(forkq.ConfigError, match="no jobs registered"):
        forkq.WorkerPool("t").start(redis_url)


def test_drain_before_start_is_a_clear_error() -> None:
    pool = forkq.WorkerPool("t")
    pool.register("a", lambda job: None)
    with pytest.raises(forkq.ConfigError, match="start"):
        pool.drain()


@pytest.mark.parametrize("spec", ["* * * * *", "nonsense", "61 * * * * *", "0 0 25 * * *", ""])
def test_bad_cron_spec_is_rejected_at_registration(spec: str) -> None:
    pool = forkq.WorkerPool("t")
    with pytest.raises(forkq.ConfigError, match="cron spec"):
        pool.periodically_enqueue(spec, "job")
