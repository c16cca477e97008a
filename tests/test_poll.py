"""scripts/deploy/poll.py: the deploy tools' one polling loop."""

from __future__ import annotations

import pytest

from scripts.deploy.poll import WaitTimeoutError, poll_until


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_answer_and_sleeps_between_checks() -> None:
    t = FakeTime()
    answers = iter([None, None, "ready"])
    got = poll_until(lambda: next(answers), timeout_s=60, interval_s=5,
                     timeout_message=lambda: "never", sleep=t.sleep, clock=t.clock)  # fmt: skip
    assert got == "ready" and t.sleeps == [5, 5]


def test_checks_once_more_at_the_deadline_then_times_out_with_the_last_state() -> None:
    t = FakeTime()
    calls = []

    def check() -> None:
        calls.append(t.now)

    with pytest.raises(WaitTimeoutError, match="still pending after 3 checks"):
        poll_until(check, timeout_s=10, interval_s=5, sleep=t.sleep, clock=t.clock,
                   timeout_message=lambda: f"still pending after {len(calls)} checks")  # fmt: skip
    assert calls == [0, 5, 10]


def test_a_check_that_raises_stops_the_wait() -> None:
    def check() -> None:
        raise RuntimeError("deployment failed")

    with pytest.raises(RuntimeError, match="deployment failed"):
        poll_until(check, timeout_s=10, interval_s=1, timeout_message=str, sleep=lambda s: None)


def test_a_falsy_answer_other_than_none_is_an_answer() -> None:
    assert poll_until(lambda: {}, timeout_s=0, interval_s=1, timeout_message=str) == {}
