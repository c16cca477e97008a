"""scripts/bench/flux_turns.py: which arrivals it times, and one clip through the real server
over Flux's protocol (StartOfTurn goes out before the turn's first words)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from scripts import SAMPLES_DIR
from scripts.bench import flux_turns


def _info(event: str, transcript: str = "") -> dict:
    return {"type": "TurnInfo", "event": event, "transcript": transcript}


def test_it_times_the_first_start_of_turn_and_the_first_words() -> None:
    arrivals = [
        (0.1, {"type": "Connected"}),
        (1.2, _info("StartOfTurn")),
        (1.6, _info("Update", "Today")),
        (2.0, _info("Update", "Today only")),
        (3.0, _info("EndOfTurn", "Today only.")),
        (3.5, _info("StartOfTurn", "Next")),
    ]
    assert flux_turns.first_arrivals(arrivals) == {"start_of_turn_s": 1.2, "first_words_s": 1.6}
    assert flux_turns.first_arrivals([(0.1, {"type": "Connected"})]) == {
        "start_of_turn_s": None,
        "first_words_s": None,
    }
    clips = [
        {"start_of_turn_s": 0.2, "first_words_s": 0.6},
        {"start_of_turn_s": 0.3, "first_words_s": None},
        {"start_of_turn_s": 0.4, "first_words_s": 0.9},
    ]
    summary = flux_turns.summarise(clips)
    assert summary["start_of_turn_s"] == {"n": 3, "p50": 0.3, "p95": 0.4}
    assert summary["first_words_s"]["n"] == 2 and summary["clips"] == 3
    assert flux_turns.flux_url("ws://h/v1/websocket").endswith("?" + flux_turns.FLUX_QUERY)
    assert flux_turns.flux_url("ws://h/ws?_p=").endswith("?_p=&" + flux_turns.FLUX_QUERY)


@pytest.mark.e2e
def test_start_of_turn_comes_before_the_words_through_the_server(whisper_server: Any) -> None:
    clip = asyncio.run(
        flux_turns.one_clip(
            whisper_server.ws_url, SAMPLES_DIR / "real" / "platforms.wav", 0.5, None
        )
    )
    assert clip["events"][:2] == ["Connected", "StartOfTurn"] and clip["close_code"] == 1000
    assert 0 < clip["start_of_turn_s"] < clip["first_words_s"], clip
    assert "EndOfTurn" in clip["events"]
