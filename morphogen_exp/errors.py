"""A user's mistake, and how every command-line tool reports one: a single line on stderr and exit status 2,
never a traceback. Imports nothing of Hydra, so compare.py stays a light tool."""

from __future__ import annotations

import sys
from types import TracebackType


class ConfigError(ValueError):
    """A setting the user must fix; printed as one line, never as a traceback."""


def error_line(err: BaseException) -> str:
    """The one line a tool prints for a user's error: its message, or for an OSError `<file>: <reason>`."""
    if isinstance(err, OSError):
        reason = err.strerror or str(err)
        return f"error: {err.filename}: {reason}" if err.filename else f"error: {reason}"
    return f"error: {err}"


class cli_errors:  # noqa: N801 -- used as a statement: `with cli_errors() as cli:`
    """Around a tool's work: a `user` error (ConfigError by default) or an OSError is printed as `error_line`
    and swallowed, and `status` becomes 2; anything else propagates (a bug keeps its traceback).

        with cli_errors() as cli:
            ...
        if cli.status:
            return cli.status
    """

    def __init__(self, *user: type[Exception]) -> None:
        self.user: tuple[type[Exception], ...] = user or (ConfigError,)
        self.status = 0

    def __enter__(self) -> cli_errors:
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> bool:
        if err is None or not isinstance(err, (*self.user, OSError)):
            return False
        print(error_line(err), file=sys.stderr)
        self.status = 2
        return True
