"""Together AI's and Fish Audio's TTS WebSocket clients, written from their published docs,
against the real Truss server (dummy weights): unchanged but for the URL, they get audio and a
clean end, and their bad input gets their own error shapes."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import av
import msgpack
import pytest
import websockets

pytestmark = pytest.mark.e2e

MODEL = "canopylabs/orpheus-3b-0.1-ft"


# -- Together: the docs' example client (websockets; query string; base64 deltas) -----------------
async def together_example(url: str, text: str = "Hello!") -> tuple[bytes, list[dict]]:
    """Together's documented WebSocket example, with ``wss://api.together.ai`` replaced. (The
    docs' example reads until the socket closes, which no server does by itself: this one ends
    its turn with an empty commit, as pipecat does, and stops at the item's ``.done``.)"""
    events = []
    async with websockets.connect(f"{url}?model={MODEL}&voice=tara") as ws:
        session = json.loads(await ws.recv())
        events.append(session)
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": text}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        audio_data = bytearray()
        async for msg in ws:
            data = json.loads(msg)
            events.append(data)
            if data["type"] == "conversation.item.audio_output.delta":
                audio_data.extend(base64.b64decode(data["delta"]))
            elif data["type"] == "conversation.item.audio_output.done":
                break
    return bytes(audio_data), events


async def test_together_example_client(orpheus_server: Any) -> None:
    audio, events = await asyncio.wait_for(together_example(orpheus_server.ws_url), 120)
    created = events[0]
    assert created["type"] == "session.created"
    assert created["session"]["model"] == MODEL and created["session"]["voice"] == "tara"
    assert created["session"]["object"] == "realtime.tts.session"
    assert events[1] == {"type": "conversation.item.input_text.received", "text": "Hello!"}
    assert audio and len(audio) % 2 == 0  # raw PCM s16le 24 kHz
    assert events[-1] == {"type": "conversation.item.audio_output.done", "item_id": "tts_1"}


async def test_together_word_timestamps_before_each_items_done(orpheus_server: Any) -> None:
    text = "Hello there, how are you?"
    async with websockets.connect(f"{orpheus_server.ws_url}?model={MODEL}&alignment=word") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": text}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))  # the turn's end
        kinds, stamps = [], None
        async for msg in ws:
            data = json.loads(msg)
            kinds.append(data["type"])
            if data["type"] == "conversation.item.word_timestamps":
                stamps = data
            elif data["type"] == "conversation.item.audio_output.done":
                break
    assert stamps is not None and stamps["item_id"] == "tts_1"
    assert kinds[-2:] == [
        "conversation.item.word_timestamps",
        "conversation.item.audio_output.done",
    ]
    # The dummy model's audio is not speech: only the shape is checked here (accuracy:
    # tests/test_orpheus_alignment.py).
    assert stamps["words"] == text.split()
    starts, ends = stamps["start_seconds"], stamps["end_seconds"]
    assert len(starts) == len(ends) == len(text.split())
    assert all(s <= e for s, e in zip(starts, ends, strict=True)) and starts == sorted(starts)


async def test_together_pipecat_flow_voice_update_and_clear(orpheus_server: Any) -> None:
    """What pipecat's TogetherTTSService does: ``tts_session.updated`` with the voice on
    connect, append + commit per sentence, an empty commit at the turn's end,
    ``input_text_buffer.clear`` on an interruption."""
    async with websockets.connect(f"{orpheus_server.ws_url}?model={MODEL}&voice=tara") as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await ws.send(json.dumps({"type": "tts_session.updated", "session": {"voice": "leo"}}))
        updated = json.loads(await ws.recv())
        assert updated["type"] == "session.updated" and updated["session"]["voice"] == "leo"
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": "Interrupt me."}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.clear"}))
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": "Second."}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))  # the turn's end
        done = []
        while not done:
            data = json.loads(await asyncio.wait_for(ws.recv(), 120))
            if data["type"] == "conversation.item.audio_output.done":
                done.append(data["item_id"])
        assert done == ["tts_2"]  # the cleared item never finished; the next one did


@pytest.mark.parametrize(
    ("query", "error_type"),
    [("model=hexgrad/Kokoro-82M", "invalid_request_error"),
     ("voice=nobody", "invalid_config"),
     ("alignment=phoneme", "invalid_request_error"),
     ("speed=1.5", "unsupported"),
     ("response_format=flac", "unsupported")],
)  # fmt: skip
async def test_together_bad_query_gets_together_errors(
    orpheus_server: Any, query: str, error_type: str
) -> None:
    async with websockets.connect(f"{orpheus_server.ws_url}?{query}") as ws:
        data = json.loads(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert data["type"] == "error" and data["error"]["type"] == error_type
    assert set(data["error"]) == {"message", "type", "code"}


async def test_together_bad_message_is_an_error_and_the_session_goes_on(orpheus_server: Any):
    async with websockets.connect(f"{orpheus_server.ws_url}?model={MODEL}") as ws:
        await ws.recv()
        await ws.send(json.dumps({"type": "response.create"}))
        error = json.loads(await ws.recv())
        assert error["type"] == "error" and "response.create" in error["error"]["message"]
        await ws.send(json.dumps({"type": "input_text_buffer.append", "text": "Still fine."}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
        kinds = set()
        while "conversation.item.audio_output.done" not in kinds:
            kinds.add(json.loads(await asyncio.wait_for(ws.recv(), 120))["type"])
        assert "conversation.item.audio_output.delta" in kinds


# -- Fish Audio: the docs' live client (MessagePack frames) -----------------------------------------
async def fish_example(
    url: str, request: dict, texts: list[str], **start: Any
) -> tuple[bytes, list[dict]]:
    """Fish Audio's documented live-TTS flow: start, text..., flush, stop; read until finish."""
    events = []
    audio = bytearray()
    async with websockets.connect(url) as ws:
        start_event = {"event": "start", "request": {"text": "", **request}, **start}
        await ws.send(msgpack.packb(start_event))
        for text in texts:
            await ws.send(msgpack.packb({"event": "text", "text": text}))
        await ws.send(msgpack.packb({"event": "flush"}))
        await ws.send(msgpack.packb({"event": "stop"}))
        async for message in ws:
            data = msgpack.unpackb(message)
            events.append(data)
            if data["event"] == "audio":
                audio.extend(data["audio"])
            elif data["event"] == "finish":
                break
    return bytes(audio), events


async def test_fish_example_client_mp3(orpheus_server: Any) -> None:
    request = {"format": "mp3", "reference_id": "tara", "latency": "balanced",
               "chunk_length": 200}  # fmt: skip
    audio, events = await asyncio.wait_for(
        fish_example(orpheus_server.ws_url, request, ["Hello, this is ", "streaming text. "]),
        120,
    )
    assert events[-1]["event"] == "finish" and events[-1]["reason"] == "stop"
    assert all(e["event"] in ("audio", "finish") for e in events)
    times = [e["time"] for e in events if e["event"] == "audio"]
    assert times == sorted(times)
    with av.open(io.BytesIO(audio), format="mp3") as container:
        assert container.streams.audio[0].rate == 44100  # Fish's default for mp3
        seconds = sum(f.samples for f in container.decode(audio=0)) / 44100
    assert seconds > 0.1


async def test_fish_volume_is_a_gain_and_debug_logs(orpheus_server: Any) -> None:
    request = {"format": "pcm", "sample_rate": 24000, "reference_id": "tara",
               "prosody": {"volume": -20}}  # fmt: skip
    quiet, events = await fish_example(orpheus_server.ws_url, request, ["Quiet."], debug=True)
    # -20 dB: whatever the (random) model says, no sample reaches a tenth of full scale.
    assert quiet and max(abs(x) for x in memoryview(quiet).cast("h")) <= 32768 // 10 + 1
    logs = [e["message"] for e in events if e["event"] == "log"]
    assert any(m.startswith("audio_start") for m in logs) and any("audio_done" in m for m in logs)


@pytest.mark.parametrize(
    ("request_", "error_part"),
    [({"references": [{"audio": b"RIFF", "text": "hi"}]}, "voice cloning"),
     ({"prosody": {"speed": 1.3}}, "speed"),
     ({"format": "flac"}, "format")],
)  # fmt: skip
async def test_fish_unsupported_requests_get_fish_errors(
    orpheus_server: Any, request_: dict, error_part: str
) -> None:
    async with websockets.connect(orpheus_server.ws_url) as ws:
        await ws.send(msgpack.packb({"event": "start", "request": {"text": "", **request_}}))
        error = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
        finish = msgpack.unpackb(await asyncio.wait_for(ws.recv(), 30))
        with pytest.raises(websockets.ConnectionClosed):
            await ws.recv()
    assert error["event"] == "error" and error_part in error["error"]
    assert finish["event"] == "finish" and finish["reason"] == "error"
    assert ws.close_code == 1003


@pytest.mark.parametrize("dialect", ["together", "fish", "http"])
async def test_readme_client_scripts_run(
    orpheus_server: Any, orpheus_http_server: Any, dialect: str, tmp_path
) -> None:
    """``scripts/clients/tts_dialects.py``, the runnable examples of docs/tts.md, against the server."""
    from scripts.clients import tts_dialects as tts_dialect_clients

    url = orpheus_server.ws_url
    if dialect == "http":
        url = f"{orpheus_http_server.http_url}/v1/models/model:predict"
    out = tmp_path / "audio"
    code = await asyncio.to_thread(
        tts_dialect_clients.main, [dialect, "--url", url, "--out", str(out)]
    )
    assert code == 0 and out.stat().st_size > 1000


@pytest.mark.parametrize("dialect", ["together", "fish"])
async def test_a_dialect_client_leaving_mid_stream_aborts_and_releases(
    orpheus_server: Any, dialect: str
) -> None:
    from tests.test_orpheus_e2e import wait_for_abort

    text = "A long answer that keeps the engine busy for quite a while now. " * 3
    before = orpheus_server.metrics_text()
    if dialect == "together":
        async with websockets.connect(f"{orpheus_server.ws_url}?model={MODEL}") as ws:
            await ws.recv()
            await ws.send(json.dumps({"type": "input_text_buffer.append", "text": text}))
            await ws.send(json.dumps({"type": "input_text_buffer.commit"}))
            while json.loads(await ws.recv())["type"] != "conversation.item.audio_output.delta":
                pass
    else:
        async with websockets.connect(orpheus_server.ws_url) as ws:
            await ws.send(msgpack.packb({"event": "start", "request": {"format": "pcm"}}))
            await ws.send(msgpack.packb({"event": "text", "text": text}))
            await ws.send(msgpack.packb({"event": "flush"}))
            while msgpack.unpackb(await ws.recv())["event"] != "audio":
                pass
    await wait_for_abort(orpheus_server, before, 10)
