"""orpheus_tts.pace: the first-audio wait and generation speed that TTS admission reads."""

from __future__ import annotations

import pytest

from orpheus_tts.pace import MIN_SPEED_WINDOW_S, GenerationPace
from orpheus_tts.tokens import FRAME_SECONDS


def _frames(pace: GenerationPace, request_id: str, start: float, n: int, every_s: float) -> float:
    for i in range(n):
        pace.frame(request_id, start + i * every_s)
    return start + (n - 1) * every_s


def test_first_audio_wait_is_the_longest_pending_wait() -> None:
    pace = GenerationPace()
    assert pace.first_audio_wait_s(now=5.0) == 0.0
    pace.started("a", 1.0)
    pace.started("b", 2.0)
    assert pace.first_audio_wait_s(now=3.0) == pytest.approx(2.0)
    pace.first_audio("a", 3.0)
    assert pace.first_audio_wait_s(now=3.5) == pytest.approx(1.5)  # b still waits
    pace.ended("b")
    assert pace.first_audio_wait_s(now=10.0) == 0.0 and len(pace) == 1


def test_speed_is_audio_per_wall_second_once_streaming() -> None:
    pace = GenerationPace()
    pace.started("fast", 0.0)
    last = _frames(pace, "fast", 0.2, 21, FRAME_SECONDS / 2)  # twice real time
    assert pace.speed_x(now=0.2 + MIN_SPEED_WINDOW_S / 2) is None  # too early to tell
    assert pace.speed_x(now=last) == pytest.approx(2.0)


def test_speed_is_the_median_so_one_odd_generation_does_not_decide() -> None:
    pace = GenerationPace()
    for rid, every in (
        ("a", FRAME_SECONDS / 2),
        ("b", FRAME_SECONDS / 2),
        ("odd", FRAME_SECONDS * 4),
    ):
        pace.started(rid, 0.0)
        _frames(pace, rid, 0.0, 13, every)
    assert pace.speed_x(now=FRAME_SECONDS * 6) == pytest.approx(2.0)


def test_the_speed_clock_stops_when_the_engine_is_done() -> None:
    pace = GenerationPace()
    pace.started("a", 0.0)
    last = _frames(pace, "a", 0.0, 25, FRAME_SECONDS / 2)
    pace.produced("a", last)
    # Its audio may still be decoding or sending long after; its speed stays what it was.
    assert pace.speed_x(now=last + 60.0) == pytest.approx(2.0)
    pace.ended("a")
    assert pace.speed_x(now=last + 60.0) is None


def test_unknown_generations_are_ignored() -> None:
    pace = GenerationPace()
    pace.frame("gone", 1.0)
    pace.first_audio("gone", 1.0)
    pace.produced("gone", 1.0)
    pace.ended("gone")
    assert len(pace) == 0
