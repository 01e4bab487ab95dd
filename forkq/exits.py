"""Exit codes of every forkq command, in one place (README "Exit codes", the systemd unit).

The worker command and the admin verbs share them, so a script (or systemd's
``RestartPreventExitStatus``) reads one meaning per number whatever the verb.
The children's own codes, which only their master reads, stay in ``forkq.child``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1       # an admin operation could not be done (nothing matched, Redis refused it)
EXIT_USAGE = 2        # bad flag, bad value, bad environment knob, bad Redis URL
EXIT_IMPORT = 3       # the app module could not be imported
EXIT_NO_POOL = 4      # no WorkerPool in it (or several and no :ATTR), or no jobs
EXIT_REDIS = 5        # Redis unreachable (at start for the worker; for any admin verb)
EXIT_CHILD_BOOT = 6   # children keep dying at boot
EXIT_INTERRUPTED = 130

__all__ = ["EXIT_CHILD_BOOT", "EXIT_FAILED", "EXIT_IMPORT", "EXIT_INTERRUPTED", "EXIT_NO_POOL",
           "EXIT_OK", "EXIT_REDIS", "EXIT_USAGE"]
