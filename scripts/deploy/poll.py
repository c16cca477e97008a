"""The one polling loop of the deploy tools: ask until an answer comes or the deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeoutError(RuntimeError):
    """A wait on the management API ran out of time."""


def poll_until(
    check: Callable[[], T | None],
    *,
    timeout_s: float,
    interval_s: float,
    timeout_message: Callable[[], str],
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``check`` until it returns something other than None, every ``interval_s``; it is
    always called at least once, and once more at the deadline. ``check`` raises to give up
    early (a failed deployment); past the deadline ``WaitTimeoutError(timeout_message())``."""
    deadline = clock() + timeout_s
    while True:
        answer = check()
        if answer is not None:
            return answer
        if clock() >= deadline:
            raise WaitTimeoutError(timeout_message())
        sleep(interval_s)
