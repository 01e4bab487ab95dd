"""What every ``forkq`` command shares: the parser, the error kinds, the one-line failure.

The worker command (``forkq.cli``), the admin verbs (``forkq.admin_cli``) and
``forkq demo`` all fail the same way: ONE line on stderr, ``PROG: error: ...``,
whitespace folded and any password in a URL redacted, and an exit code from
``forkq.exits``.  argparse's own "print usage and exit 2" is replaced by a
``UsageError`` so that line is ours too.
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import NoReturn, TextIO

from .connection import redact
from .exits import EXIT_USAGE


class UsageError(Exception):
    """A bad command line, environment value or input (exit 2)."""


class CliError(Exception):
    """A failure the user can act on, with its exit code."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class Parser(argparse.ArgumentParser):
    """argparse that raises ``UsageError`` instead of printing usage and exiting."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def one_line(text: str) -> str:
    """One line, no password: what every error message is reduced to before printing."""
    return redact(" ".join(str(text).split())) or "unknown error"


def fail(prog: str, code: int, message: str, err: TextIO | None = None) -> int:
    """Print ``PROG: error: MESSAGE`` on one line and return ``code``."""
    (err or sys.stderr).write(f"{prog}: error: {one_line(message)}\n")
    return code


def version() -> str:
    """The installed distribution's version (package metadata: pyproject's ``version``)."""
    try:
        return metadata.version("forkq")
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def add_version(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-V", "--version", action="version", version=f"forkq {version()}")


__all__ = ["EXIT_USAGE", "CliError", "Parser", "UsageError", "add_version", "fail", "one_line",
           "version"]
