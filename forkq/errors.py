"""Every exception forkq raises on purpose, so callers can catch them by class."""

from __future__ import annotations


class ForkqError(Exception):
    """Base class of every forkq error."""


class ConfigError(ForkqError):
    """A bad option, job registration or CLI argument."""


class ArgError(ForkqError):
    """A job argument was missing or of the wrong type (see ``Job.arg_error``)."""


class RedisRefused(ConfigError, ConnectionError):
    """Redis answered but will never let forkq work: wrong credentials, missing ACL rights.

    Unlike an unreachable server (worth waiting for), retrying cannot help.
    """


class NotDeleted(ForkqError):
    """Nothing matched a delete (gocraft's ``ErrNotDeleted``)."""


class NotRetried(ForkqError):
    """Nothing matched a retry (gocraft's ``ErrNotRetried``)."""


class PayloadTooLarge(ForkqError):
    """An enqueue whose JSON is above the configured size limit."""


class EnqueueError(ForkqError):
    """Redis refused an enqueue (out of memory, read-only replica, ...)."""


class JobTimeout(BaseException):
    """Raised inside a job's thread when its soft timeout passes.

    A BaseException so that a handler's ``except Exception`` cannot swallow it.
    """


class Shutdown(BaseException):
    """Raised inside a job's thread when the pool gives up waiting for it at shutdown."""


class JobCancelled(BaseException):
    """Raised by ``job.raise_if_cancelled()`` once ``Client.cancel`` reached a running job.

    A BaseException, like JobTimeout, so a handler's ``except Exception`` does not
    swallow it; the job then ends as cancelled (never retried).
    """
