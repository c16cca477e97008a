"""scripts/deploy/smoke_test.py: protocol fakes for the failure modes, the real trusses end to end."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from http import HTTPStatus
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import SAMPLE_RATE_HZ
from scripts.clients.stt import FRAME_SAMPLES
from scripts.deploy import smoke_test as st

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "samples" / "speech_en.json").read_text())["text"]
ONE_SECOND_PCM = b"\x01\x00" * SAMPLE_RATE_HZ

Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def ws_server(
    handler: Handler, *, reject: list[int] | None = None, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[str, list[dict[str, str]]]]:
    """A local WebSocket server; ``reject`` lists HTTP statuses for the first handshakes."""
    pending = list(reject or [])
    seen_headers: list[dict[str, str]] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen_headers.append({k.lower(): v for k, v in request.headers.raw_items()})
        if pending:
            status = pending.pop(0)
            return connection.respond(HTTPStatus(status), "not ready\n")
        return None

    async with serve(handler, host, 0, process_request=process_request) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://{host}:{port}/v1/websocket", seen_headers


def tts_handler(pcm: bytes, *, close_code: int = 1000, error: str | None = None) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        config = json.loads(await ws.recv())
        assert isinstance(config, dict)
        words = []
        while (word := await ws.recv()) != END_OF_INPUT:
            words.append(word)
        assert " ".join(words) == st.DEFAULT_TTS_TEXT
        if error:
            await ws.send(
                json.dumps({"type": "error", "body": {"error_type": "x", "message": error}})
            )
        for offset in range(0, len(pcm), 4096):
            await ws.send(pcm[offset : offset + 4096])
        await ws.close(close_code, "bye" if close_code != 1000 else "")

    return handler


def stt_handler(transcripts: list[str], *, finish: bool = True) -> Handler:
    async def handler(ws: ServerConnection) -> None:
        metadata = json.loads(await ws.recv())
        assert metadata["streaming_whisper_params"]["sample_rate"] == 16000
        sizes = set()
        while True:
            message = await ws.recv()
            if isinstance(message, bytes):
                sizes.add(len(message))
                continue
            if json.loads(message) == {"type": "end_audio"}:
                break
        assert sizes == {FRAME_SAMPLES * 2}
        await ws.send(json.dumps({"type": "end_audio", "body": {"status": "acknowledged"}}))
        for num, text in enumerate(transcripts):
            await ws.send(
                json.dumps(
                    {
                        "type": "transcription",
                        "is_final": True,
                        "transcript": text,
                        "transcription_num": num,
                        "segments": [],
                    }
                )
            )
        if finish:
            await ws.send(json.dumps({"type": "end_audio", "body": {"status": "finished"}}))
        await ws.close()

    return handler


def options(kind: str, url: str, **kw) -> st.SmokeOptions:
    base = st.SmokeOptions(
        kind=kind, url=url, timeout_s=10, connect_budget_s=5, handshake_backoff_s=0.01, fast=True
    )
    return replace(base, **kw)


async def test_tts_passes_with_enough_audio_and_reports_first_audio():
    async with ws_server(tts_handler(ONE_SECOND_PCM * 2)) as (url, _):
        result = await st.run_async(options("tts", url))
    assert result.ok, result.verdict
    assert result.metrics["audio_s"] == pytest.approx(2.0)
    assert result.metrics["time_to_first_audio_s"] >= 0
    assert st.format_verdict(result).startswith(f"PASS tts {url}: 2.00 s of audio")


@pytest.mark.parametrize(
    ("handler", "message"),
    [
        (tts_handler(ONE_SECOND_PCM[: len(ONE_SECOND_PCM) // 2]), "only 0.50 s of audio"),
        (tts_handler(ONE_SECOND_PCM * 2, close_code=1011), "closed with 1011 bye"),
        (
            tts_handler(ONE_SECOND_PCM, error="voice unknown"),
            "server error frame: x: voice unknown",
        ),
        (tts_handler(ONE_SECOND_PCM + b"\x00"), "odd PCM byte count"),
    ],
)
async def test_tts_failures(handler, message):
    async with ws_server(handler) as (url, _):
        result = await st.run_async(options("tts", url))
    assert not result.ok
    assert message in result.verdict


async def test_tts_silent_server_times_out():
    async def silent(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with ws_server(silent) as (url, _):
        result = await st.run_async(options("tts", url, timeout_s=0.3))
    assert not result.ok and "no normal close within 0 s" in result.verdict


async def test_503_at_the_handshake_is_retried_until_ready():
    async with ws_server(tts_handler(ONE_SECOND_PCM * 2), reject=[503, 503, 502]) as (url, headers):
        result = await st.run_async(options("tts", url))
    assert result.ok, result.verdict
    assert result.metrics["handshake_attempts"] == 4 and len(headers) == 4


async def test_503_past_the_budget_fails():
    async with ws_server(tts_handler(ONE_SECOND_PCM), reject=[503] * 1000) as (url, _):
        result = await st.run_async(options("tts", url, connect_budget_s=0.2))
    assert not result.ok and "did not become ready" in result.verdict
    assert result.metrics["handshake_attempts"] > 1


async def test_401_is_not_retried_and_hints_at_the_key():
    async with ws_server(tts_handler(ONE_SECOND_PCM), reject=[401, 401]) as (url, headers):
        result = await st.run_async(options("tts", url))
    assert not result.ok and "HTTP 401 (check BASETEN_API_KEY)" in result.verdict
    assert len(headers) == 1


async def test_api_key_header_only_for_remote_hosts():
    key = "sk-smoke-123"
    async with ws_server(tts_handler(ONE_SECOND_PCM * 2)) as (url, headers):
        assert (await st.run_async(options("tts", url, api_key=key))).ok
    assert "authorization" not in headers[0] and "host" in headers[0]
    # 127.0.0.2 is loopback on Linux but not one of the names treated as local
    async with ws_server(tts_handler(ONE_SECOND_PCM * 2), host="127.0.0.2") as (url, headers):
        result = await st.run_async(options("tts", url, api_key=key))
    assert result.ok, result.verdict
    assert headers[0]["authorization"] == f"Api-Key {key}"
    assert key not in json.dumps(result.__dict__)


async def test_stt_passes_within_the_wer_bound():
    said = [
        u.upper().replace("nine", "9")
        for u in json.loads((ROOT / "samples" / "speech_en.json").read_text())["utterances"]
    ]
    async with ws_server(stt_handler(said)) as (url, _):
        result = await st.run_async(options("stt", url))
    assert result.ok, result.verdict
    assert result.metrics["wer"] == 0.0 and result.metrics["finals"] == 3


async def test_stt_wrong_transcript_fails_on_wer():
    async with ws_server(stt_handler(["completely different words here"])) as (url, _):
        result = await st.run_async(options("stt", url))
    assert not result.ok and result.verdict.startswith("WER 1.00 > 0.30")


async def test_stt_without_finished_fails():
    async with ws_server(stt_handler([REFERENCE], finish=False)) as (url, _):
        result = await st.run_async(options("stt", url))
    assert not result.ok and "before end_audio finished" in result.verdict


async def test_stt_real_time_pace(tmp_path):
    """Without --fast the sample is streamed at its own duration (a short clip here)."""
    clip_s = 0.5
    async with ws_server(stt_handler([REFERENCE])) as (url, _):
        sample = ROOT / "samples" / "speech_en.wav"
        with wave.open(str(sample)) as w:
            pcm = w.readframes(int(clip_s * 16000))
        short = tmp_path / "clip.wav"
        with wave.open(str(short), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            out.writeframes(pcm)
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await st.run_async(
            options("stt", url, sample=short, reference=REFERENCE, fast=False)
        )
        elapsed = loop.time() - start
    assert result.ok, result.verdict
    assert elapsed >= clip_s * 0.95


def test_the_smoke_test_scores_with_the_one_wer():
    from scripts.bench import wer

    assert st.wer is wer.wer
    assert wer.wer("Call me at nine, O'Brien!", "call me at 9 o'brien") == 0.0
    assert wer.wer("a b c d", "a b x d") == 0.25
    assert wer.wer("a b", "") == 1.0


def test_cli_requires_a_key_for_remote_urls_only():
    env = {k: v for k, v in os.environ.items() if k != "BASETEN_API_KEY"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy" / "smoke_test.py"),
            "tts",
            "wss://model-x.api.baseten.co/environments/production/websocket",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0 and "BASETEN_API_KEY is required" in proc.stderr


def test_cli_local_failure_is_one_line_and_exit_1():
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "deploy" / "smoke_test.py"),
            "tts",
            "ws://127.0.0.1:9/v1/websocket",
            "--connect-budget",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    assert line.startswith("FAIL tts ws://127.0.0.1:9/v1/websocket: ")


# --- end to end: the real trusses on the real Truss server -----------------------------------


def smoke_cli(*args: str) -> tuple[int, dict]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "deploy" / "smoke_test.py"), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


@pytest.mark.e2e
def test_e2e_stt_smoke_against_whisper_truss(whisper_server):
    code, result = smoke_cli("stt", whisper_server.ws_url, "--fast")
    assert code == 0, result
    assert result["ok"] and result["metrics"]["wer"] <= st.DEFAULT_MAX_WER
    assert result["metrics"]["finals"] >= 1


@pytest.mark.e2e
def test_e2e_tts_smoke_against_orpheus_truss(orpheus_server):
    # A short sentence: dummy weights on CPU generate slower than real time.
    code, result = smoke_cli("tts", orpheus_server.ws_url, "--text", "Hello there.")
    assert code == 0, result
    assert result["ok"] and result["metrics"]["audio_s"] >= st.DEFAULT_MIN_AUDIO_S
    assert result["metrics"]["time_to_first_audio_s"] is not None
    assert result["metrics"]["close_code"] == 1000
