"""speech_common.admission: capacity from the measured worker load, the queue-wait guard, and
the 1013 it answers with (time passed in: no sleeping)."""

from __future__ import annotations

from speech_common.admission import Admission, AdmissionPolicy


def test_prior_capacity_until_measured() -> None:
    a = Admission(AdmissionPolicy(prior_sessions=2))
    assert a.check(0.0, 0.0, active=0, queue_wait_s=0.0) is None
    assert a.check(0.0, 0.0, active=1, queue_wait_s=0.0) is None
    refusal = a.check(0.0, 0.0, active=2, queue_wait_s=0.0)
    assert refusal is not None and refusal.close_code == 1013
    assert refusal.frame()["body"]["retry_after_s"] == 2.0
    assert "capacity (2)" in refusal.message and a.refused == 1


def test_capacity_follows_the_measured_cost_per_session() -> None:
    policy = AdmissionPolicy(prior_sessions=100, window_s=10.0, smoothing=1.0)
    a = Admission(policy)
    # 4 sessions keep the worker 40 % busy: 0.1 each, so 0.8 / 0.1 = 8 fit.
    for t in range(0, 11):
        a.observe(float(t), busy_s=0.4 * t, active=4)
    assert a.session_cost is not None and abs(a.session_cost - 0.1) < 1e-9
    assert a.capacity == 8
    assert a.check(11.0, 4.4, active=7, queue_wait_s=0.0) is None
    assert a.check(11.0, 4.4, active=12, queue_wait_s=0.0) is not None


def test_idle_or_short_windows_do_not_move_the_estimate() -> None:
    a = Admission(AdmissionPolicy(prior_sessions=3, window_s=10.0))
    a.observe(0.0, 0.0, active=2)
    a.observe(1.0, 0.9, active=2)  # 1 s < window / 4: too short to measure
    assert a.session_cost is None and a.capacity == 3
    a.observe(20.0, 0.9 + 0.01, active=2)  # nearly idle: noise, not a cost
    assert a.session_cost is None


def test_queue_wait_refuses_at_once() -> None:
    a = Admission(AdmissionPolicy(prior_sessions=100, max_queue_wait_s=0.5))
    assert a.check(0.0, 0.0, active=0, queue_wait_s=0.4) is None
    refusal = a.check(0.0, 0.0, active=0, queue_wait_s=0.8)
    assert refusal is not None and "0.8 s behind" in refusal.message


def test_old_samples_leave_the_window() -> None:
    a = Admission(AdmissionPolicy(prior_sessions=100, window_s=10.0, smoothing=1.0))
    for t in range(0, 100):
        a.observe(float(t), busy_s=0.5 * t, active=1)
    assert len(a._samples) <= 12  # noqa: SLF001 (bounded: a replica runs for weeks)
    assert abs(a.session_cost - 0.5) < 1e-9 and a.capacity == 1
