"""The HTTP flavour (``config_http.yaml``) through the real Truss server (dummy weights):
Together's speech request body (sent with the tooling's HTTP client, httpx), each answer
decoded by an independent decoder (Python's ``wave``, FFmpeg through PyAV), server-sent events
parsed as Together's clients parse them."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import wave
from typing import Any

import av
import pytest

from scripts.clients.connect import http_client

pytestmark = pytest.mark.e2e

MODEL = "canopylabs/orpheus-3b-0.1-ft"


async def speech(server: Any, body: dict) -> tuple[int, str, bytes]:
    url = f"{server.http_url}/v1/models/model:predict"
    async with http_client(url, timeout_s=120) as http:
        response = await http.post(url, json=body)
    return response.status_code, response.headers.get("content-type", ""), response.content


def _ffmpeg_seconds(data: bytes, fmt: str, rate: int) -> float:
    options = {"sample_rate": str(rate), "ch_layout": "mono"} if fmt == "mulaw" else {}
    with av.open(io.BytesIO(data), format=fmt, options=options) as c:
        return sum(f.samples for f in c.decode(audio=0)) / c.streams.audio[0].rate


@pytest.mark.parametrize("fmt", ["wav", "mp3", "raw", "mulaw"])
async def test_non_streaming_formats_decode(orpheus_http_server: Any, fmt: str) -> None:
    body = {"model": MODEL, "input": "Hello from the HTTP flavour.", "voice": "tara",
            "response_format": fmt}  # fmt: skip
    status, content_type, data = await speech(orpheus_http_server, body)
    assert status == 200, data[:300]
    if fmt == "wav":
        assert content_type == "audio/wav"
        with wave.open(io.BytesIO(data)) as w:  # a whole file: sizes filled in
            assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
            assert w.getnframes() * 2 == len(data) - 44 and w.getnframes() > 2400
    elif fmt == "mp3":
        assert content_type == "audio/mpeg" and _ffmpeg_seconds(data, "mp3", 24000) > 0.1
    elif fmt == "raw":
        assert content_type == "application/octet-stream" and len(data) % 2 == 0 and data
    else:
        assert content_type == "audio/basic"
        assert abs(_ffmpeg_seconds(data, "mulaw", 8000) - len(data) / 8000) < 1e-6


async def test_streaming_server_sent_events(orpheus_http_server: Any) -> None:
    body = {"model": MODEL, "input": "Streaming speech. Two sentences.", "voice": "tara",
            "stream": True, "response_format": "raw", "response_encoding": "pcm_s16le"}  # fmt: skip
    status, content_type, data = await speech(orpheus_http_server, body)
    assert status == 200 and content_type.startswith("text/event-stream")
    lines = [line for line in data.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert events and all(e["type"] == "conversation.item.audio_output.delta" for e in events)
    pcm = b"".join(base64.b64decode(e["delta"]) for e in events)
    assert len(pcm) > 4800 and len(pcm) % 2 == 0


@pytest.mark.parametrize(
    ("body", "error_type"),
    [({"input": "x", "voice": "nobody"}, "invalid_config"),
     ({"input": "x", "response_format": "flac"}, "invalid_request_error"),
     ({"input": ""}, "invalid_request_error"),
     ({"input": "x", "alignment": "word"}, "unsupported"),  # needs stream
     ({"input": "x", "model": "hexgrad/Kokoro-82M"}, "invalid_request_error"),
     ({"input": "x", "stream": True, "voice": "nobody"}, "invalid_config")],
)  # fmt: skip
async def test_bad_requests_are_400_with_togethers_error_shape(
    orpheus_http_server: Any, body: dict, error_type: str
) -> None:
    status, _, data = await speech(orpheus_http_server, body)
    assert status == 400, data[:300]
    error = json.loads(data)["error"]
    assert error["type"] == error_type and set(error) == {"message", "type", "code"}


async def test_streaming_with_word_timestamps(orpheus_http_server: Any) -> None:
    body = {"input": "Timed words here.", "stream": True, "response_format": "raw",
            "alignment": "word"}  # fmt: skip
    status, _, data = await speech(orpheus_http_server, body)
    assert status == 200
    lines = [line[6:] for line in data.decode().split("\n") if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    events = [json.loads(line) for line in lines[:-1]]
    stamps = [e for e in events if e["type"] == "conversation.item.word_timestamps"]
    assert len(stamps) == 1 and stamps[0]["words"] == ["Timed", "words", "here."]
    assert events[-1] is stamps[0]  # after the generation's audio


async def test_client_leaving_mid_stream_aborts_the_generation(orpheus_http_server: Any) -> None:
    """A streaming HTTP client that goes away is a disconnect: the engine request is aborted
    and nothing stays active, as for a WebSocket client."""
    from tests.test_orpheus_e2e import wait_for_abort

    before = orpheus_http_server.metrics_text()
    body = {"input": "A long answer that keeps the engine busy for quite a while now. " * 3,
            "stream": True, "response_format": "raw"}  # fmt: skip
    url = f"{orpheus_http_server.http_url}/v1/models/model:predict"
    async with http_client(url, timeout_s=120) as http:
        async with http.stream("POST", url, json=body) as response:
            assert response.status_code == 200
            async with contextlib.aclosing(response.aiter_lines()) as lines:
                await anext(lines)  # the first event arrived: generation running
    await wait_for_abort(orpheus_http_server, before, 10)
