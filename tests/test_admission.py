"""speech_common.admission: the policy that answers 1013 (with a retry hint)."""

from __future__ import annotations

from speech_common.admission import Admission, AdmissionPolicy


def test_capacity_bounds_a_burst_before_any_load_shows() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=2))
    assert a.check(active=0, queue_wait_s=0.0) is None
    assert a.check(active=1, queue_wait_s=0.0) is None
    refusal = a.check(active=2, queue_wait_s=0.0)
    assert refusal is not None and refusal.close_code == 1013
    assert refusal.frame()["body"]["retry_after_s"] == 2.0
    assert "2 sessions use this replica's capacity" in refusal.message and a.refused == 1


def test_a_lagging_queue_refuses() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100, max_queue_wait_s=0.5))
    assert a.check(active=0, queue_wait_s=0.4) is None
    refusal = a.check(active=0, queue_wait_s=0.8)
    assert refusal is not None and "0.8 s behind" in refusal.message


def test_a_generation_waiting_for_first_audio_refuses() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100, max_first_audio_s=1.0))
    assert a.check(active=3, queue_wait_s=0.0, first_audio_wait_s=0.9) is None
    refusal = a.check(active=3, queue_wait_s=0.0, first_audio_wait_s=1.5)
    assert refusal is not None and refusal.close_code == 1013
    assert "waited 1.5 s for its first audio" in refusal.message


def test_generation_slower_than_real_time_refuses_unless_unknown() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100, min_speed_x=1.0))
    assert a.check(active=3, queue_wait_s=0.0, speed_x=1.4) is None
    assert a.check(active=3, queue_wait_s=0.0, speed_x=None) is None  # nothing to tell yet
    refusal = a.check(active=3, queue_wait_s=0.0, speed_x=0.8)
    assert refusal is not None and "0.80x real time" in refusal.message


def test_pace_signals_are_off_unless_set() -> None:
    a = Admission(AdmissionPolicy(capacity_sessions=100))
    assert a.check(active=3, queue_wait_s=0.0, first_audio_wait_s=60.0, speed_x=0.01) is None
