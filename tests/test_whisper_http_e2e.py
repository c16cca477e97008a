"""The whisper truss's HTTP flavour (``config_http.yaml``) through the real Truss server (tiny.en
on CPU): OpenAI's multipart transcription request arrives intact (the file's exact duration comes
back), every response_format answers as OpenAI's does, files of other containers decode, what
cannot be transcribed is a 400 in OpenAI's error shape (never a 500), requests at once share the
worker, and the SDK's path (``…:predict/?_p=audio/transcriptions``) reaches the model."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.whisper_helpers import wer

pytestmark = pytest.mark.e2e

REAL = Path(__file__).resolve().parents[1] / "samples" / "real"
JFK = REAL / "jfk-inaugural.wav"
TIMEOUT = aiohttp.ClientTimeout(120)


def reference(name: str) -> str:
    return json.loads((REAL / f"{name}.json").read_text())["text"]


def form(data: bytes, filename: str = "speech.wav", **fields: Any) -> aiohttp.FormData:
    out = aiohttp.FormData()
    out.add_field("model", "whisper-1")
    for name, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            out.add_field(name + "[]" if isinstance(value, list) else name, str(item))
    out.add_field("file", data, filename=filename, content_type="application/octet-stream")
    return out


async def transcribe(server: Any, data: bytes, path: str = ":predict", **fields: Any):
    url = f"{server.http_url}/v1/models/model{path}"
    async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
        async with http.post(url, data=form(data, **fields)) as response:
            return response.status, response.headers.get("content-type", ""), await response.read()


def run(coro):
    return asyncio.run(coro)


def test_json_by_default_and_the_upload_arrives_intact(whisper_http_server: Any) -> None:
    status, content_type, body = run(transcribe(whisper_http_server, JFK.read_bytes()))
    assert status == 200 and content_type == "application/json", body[:300]
    answer = json.loads(body)
    assert set(answer) == {"text", "usage"}
    assert wer(reference("jfk-inaugural"), answer["text"]) < 0.1, answer["text"]
    assert answer["usage"] == {"type": "duration", "seconds": 11}
    status, _, body = run(
        transcribe(whisper_http_server, JFK.read_bytes(), response_format="verbose_json")
    )
    with wave.open(str(JFK)) as w:  # every byte of the file arrived: its exact duration
        assert json.loads(body)["duration"] == round(w.getnframes() / w.getframerate(), 3)


def _cues(text: str, marker: str) -> list[tuple[float, float, str]]:
    stamp = rf"(\d\d):(\d\d):(\d\d){re.escape(marker)}(\d\d\d)"
    cues = re.findall(rf"^{stamp} --> {stamp}\n(.+)\n\n", text, re.M)

    def seconds(h, m, s, ms) -> float:
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    return [(seconds(*c[0:4]), seconds(*c[4:8]), c[8]) for c in cues]


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_text_subtitles_as_openai_writes_them(whisper_http_server: Any, fmt: str) -> None:
    status, content_type, body = run(
        transcribe(whisper_http_server, JFK.read_bytes(), response_format=fmt)
    )
    assert status == 200 and content_type == "text/plain; charset=utf-8"
    text = body.decode()
    if fmt == "text":
        assert text.endswith("\n") and wer(reference("jfk-inaugural"), text) < 0.1
        return
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n")
    else:
        assert re.match(r"1\n\d\d:\d\d:\d\d,\d\d\d --> ", text)
    cues = _cues(text, "," if fmt == "srt" else ".")
    assert cues and text.count(" --> ") == len(cues)  # every cue parsed
    assert all(a <= b <= 11.0 for a, b, _ in cues)
    assert all(c1[1] <= c2[0] + 1e-3 for c1, c2 in zip(cues, cues[1:], strict=False))
    assert wer(reference("jfk-inaugural"), " ".join(c[2] for c in cues)) < 0.1


def test_verbose_json_with_words_and_segments(whisper_http_server: Any) -> None:
    status, _, body = run(
        transcribe(whisper_http_server, JFK.read_bytes(), response_format="verbose_json",
                   timestamp_granularities=["word", "segment"])
    )  # fmt: skip
    assert status == 200
    answer = json.loads(body)
    assert set(answer) == {"task", "language", "duration", "text", "segments", "words", "usage"}
    assert (answer["task"], answer["language"]) == ("transcribe", "english")
    words = answer["words"]
    assert [w["word"] for w in words[:4]] == ["And", "so", "my", "fellow"]
    assert all(w["start"] <= w["end"] for w in words)
    assert all(a["start"] <= b["start"] for a, b in zip(words, words[1:], strict=False))
    assert [s["id"] for s in answer["segments"]] == list(range(len(answer["segments"])))
    assert all(s["text"].startswith(" ") and s["tokens"] for s in answer["segments"])


def test_other_containers_decode_through_the_server(whisper_http_server: Any) -> None:
    from tests.test_whisper_openai_api import encode, real_pcm

    data = encode(real_pcm("LJ001-0013"), "ogg", "libopus", 48000, "stereo")
    status, _, body = run(
        transcribe(whisper_http_server, data, filename="memo.ogg", response_format="text")
    )
    assert status == 200 and wer(reference("LJ001-0013"), body.decode()) < 0.15, body


@pytest.mark.parametrize(
    ("data", "fields", "param"),
    [(b"definitely not audio", {}, "file"),
     (b"", {}, "file"),
     (JFK.read_bytes()[:2000], {}, "file"),  # 30 ms: too short
     (JFK.read_bytes(), {"language": "xx"}, "language"),
     (JFK.read_bytes(), {"temperature": "7"}, "temperature"),
     (JFK.read_bytes(), {"response_format": "json", "timestamp_granularities": ["word"]},
      "timestamp_granularities"),
     (JFK.read_bytes(), {"response_format": "docx"}, "response_format")],
)  # fmt: skip
def test_what_cannot_be_transcribed_is_a_400_in_openais_shape(
    whisper_http_server: Any, data: bytes, fields: dict, param: str
) -> None:
    status, content_type, body = run(transcribe(whisper_http_server, data, **fields))
    assert status == 400 and content_type == "application/json", body[:300]
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"]) == ("invalid_request_error", param)


def test_a_json_body_is_a_400_too(whisper_http_server: Any) -> None:
    async def post() -> tuple[int, bytes]:
        url = f"{whisper_http_server.http_url}/v1/models/model:predict"
        async with aiohttp.ClientSession(timeout=TIMEOUT) as http:
            async with http.post(url, json={"model": "whisper-1", "file": "x"}) as response:
                return response.status, await response.read()

    status, body = run(post())
    assert status == 400 and json.loads(body)["error"]["code"] == "invalid_content_type"


def test_requests_at_once_and_the_sdks_path(whisper_http_server: Any) -> None:
    """Three requests at once all answer (their chunks share the Whisper worker); the SDK's
    ``…:predict/?_p=audio/transcriptions`` is redirected (307) to the predict route with its
    query and its body, and answers the same."""

    async def both() -> list:
        clips = ["LJ001-0013", "LJ001-0002", "LJ001-0008"]
        results = await asyncio.gather(
            *(transcribe(whisper_http_server, (REAL / f"{c}.wav").read_bytes()) for c in clips)
        )
        redirected = await transcribe(
            whisper_http_server, JFK.read_bytes(), path=":predict/?_p=audio/transcriptions"
        )
        return [*zip(clips, results, strict=True), ("jfk-inaugural", redirected)]

    for clip, (status, _, body) in run(both()):
        assert status == 200, body[:300]
        assert wer(reference(clip), json.loads(body)["text"]) < 0.2, (clip, body)


def test_stream_sends_text_deltas_then_done(whisper_http_server: Any) -> None:
    status, content_type, body = run(
        transcribe(whisper_http_server, JFK.read_bytes(), stream="true")
    )
    assert status == 200 and content_type.startswith("text/event-stream")
    events = [
        json.loads(line[6:]) for line in body.decode().split("\n") if line.startswith("data: ")
    ]
    assert [e["type"] for e in events[:-1]] == ["transcript.text.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "transcript.text.done" and len(events) >= 2
    assert "".join(e["delta"] for e in events[:-1]) == events[-1]["text"]
    assert wer(reference("jfk-inaugural"), events[-1]["text"]) < 0.1


def test_a_telephony_recording_decodes(whisper_http_server: Any) -> None:
    """8 kHz G.711 mu-law in a WAV file, as a phone system records it."""
    from tests.test_whisper_openai_api import encode, real_pcm

    data = encode(real_pcm("LJ001-0013"), "wav", "pcm_mulaw", 8000)
    status, _, body = run(transcribe(whisper_http_server, data, response_format="text"))
    assert status == 200 and wer(reference("LJ001-0013"), body.decode()) < 0.2, body


def test_a_client_that_leaves_stops_its_transcription(whisper_http_server: Any) -> None:
    """Three minutes of speech, the client gone after a second: the server stops transcribing
    (counted as client_gone, nothing of it left queued) instead of going on to the end."""
    import numpy as np

    from tests.test_orpheus_e2e import metric
    from tests.test_whisper_openai_api import _wav, real_pcm

    pause = np.zeros(24000, np.float32)
    clips = [part for p in sorted(REAL.glob("*.wav")) for part in (real_pcm(p.stem), pause)]
    data = _wav(np.concatenate(clips))

    def gone() -> float:
        text = whisper_http_server.metrics_text()
        return metric(text, "whisper_file_requests_total", outcome="client_gone")

    def active() -> float:
        return metric(whisper_http_server.metrics_text(), "whisper_file_transcriptions_active")

    before = gone()

    async def leave() -> None:
        url = f"{whisper_http_server.http_url}/v1/models/model:predict"
        async with aiohttp.ClientSession() as http:
            post = asyncio.ensure_future(http.post(url, data=form(data)))
            deadline = time.monotonic() + 20
            while not await asyncio.to_thread(active):  # the server is transcribing it
                assert time.monotonic() < deadline and not post.done()
                await asyncio.sleep(0.1)
            post.cancel()  # the client goes away
            with contextlib.suppress(asyncio.CancelledError):
                await post

    run(leave())
    deadline = time.monotonic() + 10
    while gone() == before:
        assert time.monotonic() < deadline, "the transcription went on without its client"
        time.sleep(0.2)
    assert metric(whisper_http_server.metrics_text(), "whisper_queue_depth") == 0
    assert active() == 0
