"""OpenAI's Python SDK (``openai``, in .venv-clients), unchanged but for its base URL and key,
against the whisper truss's HTTP flavour on the real Truss server (tiny.en on CPU):
``client.audio.transcriptions.create`` in every response format, streamed, and on a file that is
no audio, parsed by the SDK's own types; and the words it hears on real speech are as good as
the streaming client's on the same clips (tests/clients/openai_stt.py, run as
tests/test_clients.py runs its scripts)."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from scripts.bench.wer import wer
from tests.test_clients import assert_ok, run_client

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
REAL = REPO / "samples" / "real"
JFK = REAL / "jfk-inaugural.wav"
CLIPS = ["LJ001-0001", "LJ001-0007", "LJ001-0010",
         "jfk-inaugural", "librispeech-quilter", "three-speakers"]  # fmt: skip
# The SDK's words against the streaming client's on the same clips (tiny.en; measured 0.7 % and
# 3.6 %, docs/stt.md): no worse than the stream's, with a margin of about one word.
WER_MARGIN = 0.01


def sdk_url(server: Any) -> str:
    return f"{server.http_url}/v1/models/model:predict?_p="


def reference(name: str) -> str:
    return json.loads((REAL / f"{name}.json").read_text())["text"]


def test_openai_sdk_every_response_format(whisper_http_server: Any, tmp_path: Path) -> None:
    result = run_client("openai_stt.py", "formats", sdk_url(whisper_http_server), tmp_path,
                        "--sample", str(JFK))  # fmt: skip
    assert_ok(result)
    text = reference("jfk-inaugural")
    assert wer(text, result["json"]["text"]) < 0.1, result["json"]
    assert result["json"]["usage"] == {"seconds": 11.0, "type": "duration"}
    verbose = result["verbose_json"]  # TranscriptionVerbose, as the SDK parsed it
    assert verbose["language"] == "english" and verbose["duration"] == 11.0
    assert verbose["words"][0]["word"] == "And" and len(verbose["words"]) >= 20
    assert verbose["segments"] and verbose["segments"][0]["id"] == 0
    assert re.match(r"1\n00:00:\d\d,\d{3} --> 00:00:\d\d,\d{3}\n\S", result["srt"])
    assert result["vtt"].startswith("WEBVTT\n\n00:00:") and result["vtt"].endswith("\n\n")
    assert result["text"].endswith("\n") and wer(text, result["text"]) < 0.1
    bad = result["bad_file"]  # openai.BadRequestError: status and OpenAI's error object
    assert bad["status"] == 400
    assert bad["body"]["type"] == "invalid_request_error" and bad["body"]["param"] == "file"


def test_openai_sdk_streams_the_transcript(whisper_http_server: Any, tmp_path: Path) -> None:
    result = run_client("openai_stt.py", "stream", sdk_url(whisper_http_server), tmp_path,
                        "--sample", str(JFK))  # fmt: skip
    assert_ok(result)
    events = result["events"]
    assert events[-1]["type"] == "transcript.text.done" and len(events) >= 2
    deltas = [e["delta"] for e in events if e["type"] == "transcript.text.delta"]
    assert "".join(deltas) == events[-1]["text"]
    assert wer(reference("jfk-inaugural"), events[-1]["text"]) < 0.1


def test_openai_sdk_hears_as_well_as_the_streaming_client(
    whisper_http_server: Any, whisper_server: Any, tmp_path: Path
) -> None:
    """Six real-speech clips (6 speakers): the SDK's transcripts (whole files, VAD chunks,
    beam 5) against the streaming client's finals (the published v1 metadata) on the same
    server code; the stream is sent as fast as the server takes it."""
    from scripts.clients.stt import FRAME_SAMPLES, frames_of, read_wav, stream, v1_metadata

    result = run_client("openai_stt.py", "corpus", sdk_url(whisper_http_server), tmp_path,
                        "--sample", str(REAL))  # fmt: skip
    assert_ok(result)
    assert list(result["texts"]) == CLIPS

    async def streamed() -> list[str]:  # all at once: each final is the same batched or not
        sessions = await asyncio.gather(*(
            stream(whisper_server.ws_url, frames_of(read_wav(REAL / f"{clip}.wav")),
                   v1_metadata(partials=False), frame_s=FRAME_SAMPLES / 16000, realtime=False)
            for clip in CLIPS
        ))  # fmt: skip
        assert all(s.finished for s in sessions)
        return [s.transcript for s in sessions]

    references = [reference(c) for c in CLIPS]
    sdk = wer(references, [result["texts"][c] for c in CLIPS])
    streaming = wer(references, asyncio.run(streamed()))
    print(f"WER on {len(CLIPS)} clips: openai SDK {sdk:.3f}, streaming client {streaming:.3f}")
    assert sdk <= streaming + WER_MARGIN, (sdk, streaming)
