"""Typed user-facing errors. Each kind has its own exit code; every message is one line.

The CLI turns any `ParvaError` into one line on stderr and exits with the error's `exit_code`, so
the caller can tell bad input from a request that cannot be served and from a failing machine.
"""

from __future__ import annotations

EXIT_INVALID_PLAN = 1  # `verify` found problems in a readable plan; an apply was refused or rolled back


class ParvaError(Exception):
    """Bad input: a missing or malformed file, a wrong option, an unknown model. Exit 2."""

    exit_code = 2


class Unservable(ParvaError):
    """The input is well formed but cannot be served as asked: an SLO no segment meets, a fleet too
    small. Exit 3."""

    exit_code = 3


class SystemFailure(ParvaError):
    """The machine failed: the NVIDIA driver or NVML refused, a daemon would not start, a
    permission was missing. Exit 4."""

    exit_code = 4


EXIT_CODES = {
    0: "success",
    EXIT_INVALID_PLAN: "the plan is invalid, or an apply was refused or rolled back",
    ParvaError.exit_code: "bad input",
    Unservable.exit_code: "cannot be served as asked",
    SystemFailure.exit_code: "hardware or system failure",
}
