"""The event protocol (``events: true``) and the output formats through the real Truss server
(scripts/local/serve.py --dummy-weights) over real WebSockets: turns with ``flush``, barge-in with
``clear``, voice changes, every codec decoded by FFmpeg, and bad input that is recoverable."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import av
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from scripts.clients.tts import EventSession
from tests.test_orpheus_e2e import SHORT_CONFIG, metric, published_client

pytestmark = pytest.mark.e2e

TURNS = ["Hello there, how can I help?", "Your order ships on Monday.", "Anything else today?"]


async def test_five_turns_on_one_socket(orpheus_server: Any) -> None:
    """Each turn: deltas, ``flush``; its ``flush_done`` comes after all of its audio (and after
    the ``audio_done`` of its generations), in order; then ``end`` -> ``session_done``, 1000."""
    async with await EventSession.open(orpheus_server.ws_url, SHORT_CONFIG, None) as session:
        assert session.created["sample_rate"] == 24000
        for turn in range(5):
            text = TURNS[turn % len(TURNS)]
            for i in range(0, len(text), 4):  # LLM-like deltas that cut words
                await session.say(text[i : i + 4])
            await session.control("flush", id=f"turn-{turn}")
            done = await session.wait_for("flush_done")
            assert done == {"type": "flush_done", "id": f"turn-{turn}"}
        await session.control("end")
        finished = await session.wait_for("session_done")
        await session.wait_closed()
    assert session.close_code == 1000
    log = session.received
    events = [r.event for r in log if r.event]
    starts = [e for e in events if e["type"] == "audio_start"]
    assert [e["text"] for e in starts] == [TURNS[t % len(TURNS)] for t in range(5)]
    # Audio of turn t lies between its audio_start and its flush_done; nothing after it.
    flushes = [i for i, r in enumerate(log) if r.event and r.event["type"] == "flush_done"]
    starts_at = [i for i, r in enumerate(log) if r.event and r.event["type"] == "audio_start"]
    for start, end in zip(starts_at, flushes, strict=True):
        assert start < end
        assert any(r.audio for r in log[start:end])
    assert not any(r.audio for r in log[flushes[-1] :])
    pcm_s = len(session.audio()) / 2 / 24000
    assert finished["generations"] == 5 and abs(finished["audio_s"] - pcm_s) < 1e-3


async def test_clear_barges_in_and_the_next_turn_works(orpheus_server: Any) -> None:
    before = orpheus_server.metrics_text()
    long_config = {**SHORT_CONFIG, "max_tokens": 2000}
    async with await EventSession.open(orpheus_server.ws_url, long_config, None) as session:
        await session.say("A long answer that keeps the engine busy for quite a while now.")
        flushed = await session.control("flush", id="long")
        await session.wait_audio(flushed)
        await session.control("clear", id="stop")
        cleared = await session.wait_for("cleared")
        assert cleared == {"type": "cleared", "id": "stop", "generations_aborted": 1}
        # Nothing of the cleared text after ``cleared``; the next turn speaks.
        await session.say("Sure, go ahead.")
        await session.control("flush", id="next")
        await session.wait_for("flush_done")
        index = next(i for i, r in enumerate(session.received) if r.event is cleared)
        after = session.received[index + 1 :]
        next_start = next(i for i, r in enumerate(after) if r.event)
        assert after[next_start].event["type"] == "audio_start"
        assert after[next_start].event["text"] == "Sure, go ahead."
        assert not any(r.audio for r in after[:next_start])
        assert not any(r.event.get("id") == "long" for r in session.received if r.event)
        await session.close()
    after_metrics = orpheus_server.metrics_text()
    aborted = metric(after_metrics, "orpheus_aborted_generations_total", reason="clear")
    assert aborted == metric(before, "orpheus_aborted_generations_total", reason="clear") + 1


async def test_update_changes_voice_mid_session(orpheus_server: Any) -> None:
    async with await EventSession.open(orpheus_server.ws_url, SHORT_CONFIG, None) as session:
        await session.say("First voice. ")
        await session.control("update", voice="leo", temperature=0.9)
        await session.say("Second voice.")
        await session.control("flush")
        await session.wait_for("flush_done")
        texts = [
            r.event["text"] for r in session.received if r.event and r.event["type"] == "audio_done"
        ]
        await session.close()
    assert texts == ["First voice.", "Second voice."]


def _decode(fmt: str, rate: int, data: bytes) -> float:
    """Seconds of audio, decoded by FFmpeg (through PyAV)."""
    container = {"opus": "ogg"}.get(fmt, fmt)
    options = {"sample_rate": str(rate), "ch_layout": "mono"} if fmt.endswith("law") else {}
    with av.open(io.BytesIO(data), format=container, options=options) as c:
        samples = sum(f.samples for f in c.decode(audio=0))
        return samples / c.streams.audio[0].rate


@pytest.mark.parametrize(
    ("fmt", "rate"),
    [("mp3", 24000), ("opus", 48000), ("mulaw", 8000), ("wav", 16000), ("alaw", 8000)],
)
async def test_formats_through_the_server_decode_to_the_timeline(
    orpheus_server: Any, fmt: str, rate: int
) -> None:
    config = {**SHORT_CONFIG, "response_format": fmt, "sample_rate": rate}
    async with await EventSession.open(orpheus_server.ws_url, config, None) as session:
        assert session.created["response_format"] == fmt and session.created["sample_rate"] == rate
        await session.say("Formats for every client.")
        await session.control("end")
        done = await session.wait_for("session_done")
        await session.wait_closed()
    assert session.close_code == 1000
    seconds = _decode(fmt, rate, session.audio())
    slack = {"mp3": (1105 + 1152) / rate, "opus": 0.02}.get(fmt, 1 / rate)
    assert abs(seconds - done["audio_s"]) <= slack + 1e-3, (seconds, done["audio_s"])
    assert seconds > 0.1


async def test_published_client_with_a_format_gets_audio_and_no_events(orpheus_server: Any) -> None:
    config = {**SHORT_CONFIG, "response_format": "mulaw"}
    result = await asyncio.wait_for(
        published_client(orpheus_server.ws_url, "Telephone audio, please.", config), 120
    )
    assert result["close_code"] == 1000 and result["texts"] == []
    data = b"".join(result["audio"])
    assert abs(_decode("mulaw", 8000, data) - len(data) / 8000) < 1e-6


@pytest.mark.parametrize(
    ("first", "error_type", "code"),
    [
        ({"response_format": "flac"}, "unsupported_format", 1003),
        ({"response_format": "opus", "sample_rate": 44100}, "unsupported_sample_rate", 1003),
        ({"sample_rate": 12345}, "unsupported_sample_rate", 1003),
        ({"events": "yes"}, "invalid_config", 1008),
    ],
)
async def test_unsupported_first_frames_are_typed_errors(
    orpheus_server: Any, first: dict, error_type: str, code: int
) -> None:
    async with connect(orpheus_server.ws_url, compression=None) as ws:
        await ws.send(json.dumps({**SHORT_CONFIG, **first}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(ConnectionClosed):
            await ws.recv()
    assert frame["type"] == "error" and frame["body"]["error_type"] == error_type
    assert ws.close_code == code


async def test_bad_control_messages_are_recoverable_and_disturb_no_one(orpheus_server: Any) -> None:
    async def good_session() -> float:
        async with await EventSession.open(orpheus_server.ws_url, SHORT_CONFIG, None) as session:
            await session.say("I am not disturbed.")
            await session.control("end")
            done = await session.wait_for("session_done")
            await session.close()
            return done["audio_s"]

    async def bad_session() -> list[dict]:
        async with await EventSession.open(orpheus_server.ws_url, SHORT_CONFIG, None) as session:
            for frame in ('{"type": "dance"}', "{broken", '{"type": "update", "voice": "nobody"}'):
                await session.say(frame)
            errors = [await session.wait_for("error") for _ in range(3)]
            await session.say("Still here.")
            await session.control("flush")
            await session.wait_for("flush_done")
            await session.close()
            return errors

    audio_s, errors = await asyncio.wait_for(asyncio.gather(good_session(), bad_session()), 120)
    assert audio_s > 0
    assert [e["body"]["error_type"] for e in errors] == [
        "unknown_control",
        "invalid_json",
        "invalid_message",
    ]
    assert all(e["body"]["recoverable"] for e in errors)


TURNS_ON_ONE_SOCKET = 8  # 20 took ~28 s of CI; the property is per turn


async def test_every_turn_on_one_socket_ends_with_its_flush_done(orpheus_server: Any) -> None:
    """TURNS_ON_ONE_SOCKET turns on one socket (``scripts/bench/tts.py --turns`` times 20): each turn's
    generation is done (``audio_done``) and its audio sent before its ``flush_done``; nothing of
    a turn comes after it. (Random dummy weights may generate a turn with no audio frames.)"""
    async with await EventSession.open(orpheus_server.ws_url, SHORT_CONFIG, None) as session:
        for turn in range(TURNS_ON_ONE_SOCKET):
            await session.say(f"Turn {turn} is short.")
            await session.control("flush", id=turn)
            await session.wait_for("flush_done")
        await session.close()
    log = session.received
    flushes = [i for i, r in enumerate(log) if r.event and r.event["type"] == "flush_done"]
    assert [log[i].event["id"] for i in flushes] == list(range(TURNS_ON_ONE_SOCKET))
    starts = [i for i, r in enumerate(log) if r.event and r.event["type"] == "audio_start"]
    dones = [i for i, r in enumerate(log) if r.event and r.event["type"] == "audio_done"]
    assert len(starts) == len(dones) == TURNS_ON_ONE_SOCKET
    for start, done, flushed in zip(starts, dones, flushes, strict=True):
        assert start < done < flushed
        assert not any(r.audio for r in log[done:flushed])  # the turn's audio came before done
    assert any(r.audio for r in log)


async def test_tts_client_cli_speaks_the_event_protocol(orpheus_server: Any, tmp_path) -> None:
    """``scripts/clients/tts.py --events --format mp3``: two paragraphs are two turns; the file
    it writes decodes."""
    from scripts.clients import tts as tts_client

    out = tmp_path / "turns.mp3"
    argv = ["--url", orpheus_server.ws_url, "--events", "--format", "mp3", "--rate", "24000",
            "--max-tokens", "70", "--text", "First turn here.\n\nSecond turn here.",
            "--out", str(out)]  # fmt: skip
    code = await asyncio.to_thread(tts_client.main, argv)
    assert code == 0 and _decode("mp3", 24000, out.read_bytes()) > 0.1


async def test_word_timestamps_event_before_audio_done(orpheus_server: Any) -> None:
    config = {**SHORT_CONFIG, "word_timestamps": True}
    async with await EventSession.open(orpheus_server.ws_url, config, None) as session:
        await session.say("Words with times.")
        await session.control("flush")
        stamps = await session.wait_for("word_timestamps")
        done = await session.wait_for("audio_done")
        await session.close()
    assert [w["word"] for w in stamps["words"]] == ["Words", "with", "times."]
    assert all(done["start_s"] <= w["start_s"] <= w["end_s"] <= done["end_s"] + 1e-3
               for w in stamps["words"])  # fmt: skip


@pytest.mark.parametrize("point", ["after_flush", "first_audio", "aligning"])
async def test_event_session_left_at_any_point_frees_everything(
    orpheus_server: Any, point: str
) -> None:
    """A client of the event protocol leaving mid-turn (just after ``flush``, at the first
    audio, or with word timestamps on, while its audio is kept for the aligner): the generation
    is aborted and no session, generation or slot stays active."""
    from tests.test_orpheus_e2e import metric

    config = {**SHORT_CONFIG, "max_tokens": 2000, "word_timestamps": point == "aligning"}
    async with await EventSession.open(orpheus_server.ws_url, config, None) as session:
        await session.say("A long answer that keeps the engine busy for quite a while now.")
        sent = await session.control("flush")
        if point != "after_flush":
            await session.wait_audio(sent)
        await session.close()
    for _ in range(500):
        text = orpheus_server.metrics_text()
        if (
            metric(text, "orpheus_active_sessions") == 0
            and metric(text, "orpheus_active_generations") == 0
        ):
            return
        await asyncio.sleep(0.02)
    raise AssertionError("the session or its generation stayed active")
