"""scripts/bench/stt.py's session outcomes against stand-in servers: a refusal is told from an
admitted session's error however the race between the client's metadata frame and the server's
1013 goes, and every error frame and close is recorded."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection, serve

from scripts.bench import stt as bench
from scripts.clients.stt import Result

Handler = Callable[[ServerConnection], Awaitable[None]]

REFUSAL = {
    "type": "error",
    "body": {
        "error_type": "overloaded",
        "message": "replica busy: 4 sessions use this replica's capacity; retry later",
        "recoverable": False,
        "retry_after_s": 2.0,
    },
}
FINAL_FAILED = {
    "type": "error",
    "body": {
        "error_type": "final_failed",
        "message": "transcription 0 failed; the session continues",
        "recoverable": True,
        "transcription_num": 0,
    },
}
MID_STREAM_OVERLOAD = {
    "type": "error",
    "body": {
        "error_type": "overloaded",
        "message": "server cannot keep up with the audio",
        "recoverable": False,
    },
}


async def one_session(handler: Handler) -> bench.SessionStats:
    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        return await bench.one_session(f"ws://127.0.0.1:{port}/v1/websocket", "speech_en", None, 0)


def after_metadata(*frames: dict, code: int, reason: str) -> Handler:
    """The real server's order: the socket is accepted, the client's metadata arrives, then the
    server answers (Truss accepts before the model decides whether to admit)."""

    async def handler(ws: ServerConnection) -> None:
        json.loads(await ws.recv())
        for frame in frames:
            await ws.send(json.dumps(frame))
        await ws.close(code, reason)

    return handler


async def test_a_refusal_read_after_the_metadata_went_out_is_a_refusal():
    """The 6-client run's "3 admitted sessions ended with an error frame": refusals whose
    metadata frame went out before the 1013 came in were counted as admitted sessions."""
    reason = REFUSAL["body"]["message"]
    stats = await one_session(after_metadata(REFUSAL, code=1013, reason=reason))
    assert stats.refused
    assert stats.errors == 0  # no error of an admitted session
    assert stats.close_code == 1013 and stats.close_reason == reason
    assert stats.error_frames == [REFUSAL]

    row = bench.summarise(1, [stats], {"speech_en": "x"}, None)
    assert row["refused"] == 1 and row["errors"] == 0 and row["unfinished_sessions"] == 0
    assert row["sessions_detail"] == [
        {
            "file": "speech_en",
            "refused": True,
            "finished": False,
            "close_code": 1013,
            "close_reason": reason,
            "errors": [REFUSAL["body"]],
        }
    ]
    assert bench.failed_sessions([row]) == []


async def test_an_admitted_sessions_error_frames_and_close_are_recorded():
    stats = await one_session(after_metadata(FINAL_FAILED, code=1000, reason="end of audio"))
    assert not stats.refused
    assert stats.errors == 1 and stats.error_frames == [FINAL_FAILED]
    assert (stats.close_code, stats.close_reason) == (1000, "end of audio")

    row = bench.summarise(1, [stats], {"speech_en": "x"}, None)
    assert row["errors"] == 1 and row["error_types"] == {"final_failed": 1}
    assert row["close_codes"] == {"1000": 1}
    assert row["sessions_detail"][0]["errors"] == [FINAL_FAILED["body"]]
    (line,) = bench.failed_sessions([row])
    assert "speech_en" in line and "final_failed" in line and "close 1000" in line


async def test_an_admitted_session_closed_1013_mid_stream_is_not_a_refusal():
    reason = MID_STREAM_OVERLOAD["body"]["message"]
    stats = await one_session(after_metadata(MID_STREAM_OVERLOAD, code=1013, reason=reason))
    assert not stats.refused and stats.errors == 1
    assert not stats.finished and stats.close_code == 1013


@pytest.mark.parametrize(
    ("close_code", "messages", "refused"),
    [
        (1013, [], True),  # the refusal frame was not read: the close alone
        (1013, [REFUSAL], True),
        (1013, [MID_STREAM_OVERLOAD], False),  # no retry hint: it was admitted
        (1013, [{"type": "transcription", "is_final": False}, REFUSAL], False),
        (1000, [REFUSAL], False),
        (1011, [], False),
        (None, [], False),
    ],
)
def test_result_refused(close_code, messages, refused):
    result = Result(arrivals=[(0.1, m) for m in messages], close_code=close_code)
    assert result.refused is refused
