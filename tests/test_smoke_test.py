"""scripts/deploy/smoke_test.py (one session of scripts/deploy/loadtest.py with smoke budgets):
stand-in sockets for the failure paths, the real local servers end to end."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
import wave
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from orpheus_tts.schema import END_OF_INPUT
from orpheus_tts.tokens import SAMPLE_RATE_HZ
from scripts.deploy import loadtest as lt
from scripts.deploy import smoke_test as st

ROOT = Path(__file__).resolve().parent.parent
# ONE_SECOND_PCM, ws_server and tts_handler are shared with tests/test_clients_connect.py.
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


def speaker(seconds: float, close_code: int = 1000):
    async def handler(ws: ServerConnection) -> None:
        await ws.recv()
        while await ws.recv() != END_OF_INPUT:
            pass
        await ws.send(b"\x00\x01" * int(SAMPLE_RATE_HZ * seconds))
        await ws.close(close_code, "boom" if close_code != 1000 else "")

    return handler


async def smoke_against(handler: Any, protocol: str = "tts") -> lt.Measurement:
    import asyncio

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        return await asyncio.to_thread(st.run, protocol, f"ws://127.0.0.1:{port}", None)


async def test_tts_passes_with_enough_audio():
    result = await smoke_against(speaker(2.0))
    assert result.ok and result.metrics["audio_s"] == pytest.approx(2.0)
    assert result.metrics["ttfa_s_p50"] is not None and result.metrics["errors"] == 0


@pytest.mark.parametrize(
    ("handler", "message"),
    [(speaker(0.1), "only 0.10 s of audio"), (speaker(2.0, 1011), "close 1011 boom")],
)
async def test_tts_failures_say_why(handler, message):
    result = await smoke_against(handler)
    assert not result.ok and "errors 1 > max 0" in result.verdict and message in result.verdict


def test_unreachable_server_is_a_failed_measurement_not_an_exception():
    result = st.run("tts", "ws://127.0.0.1:9/v1/websocket", None)
    assert not result.ok and result.failures


@contextmanager
def http_server(status: int, body: bytes) -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A local predict endpoint answering every POST with ``status`` and ``body``."""
    requests: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            requests.append({"body": json.loads(self.rfile.read(length)), **self.headers})
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/models/model:predict", requests
    finally:
        server.shutdown()
        server.server_close()


def wav_bytes(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE_HZ)
        w.writeframes(b"\x00\x00" * int(SAMPLE_RATE_HZ * seconds))
    return out.getvalue()


def test_http_posts_togethers_body_and_measures_the_wav():
    with http_server(200, wav_bytes(2.0)) as (url, requests):
        result = st.run("http", url, "secret-key")
    assert result.ok, result.verdict
    assert result.metrics["audio_s"] == pytest.approx(2.0) and result.metrics["errors"] == 0
    body = requests[0]["body"]
    assert set(body) == {"model", "input", "voice"} and body["input"] == st.DEFAULT_TTS_TEXT
    assert all(name.lower() != "authorization" for name in requests[0])  # local: no key


def test_http_failures_say_why():
    with http_server(503, b"loading") as (url, _):
        result = st.run("http", url, None)
    assert not result.ok and "HTTP 503: b'loading'" in result.verdict


def test_budgets_max_and_min():
    metrics = {"wer": 0.2, "audio_s": 0.5, "errors": 0}
    assert lt.violations(metrics, {"wer_max": 0.3, "errors_max": 0}) == []
    assert lt.violations(metrics, {"wer_max": 0.1}) == ["wer 0.2 > max 0.1"]
    assert lt.violations(metrics, {"audio_s_min": 1.0}) == ["audio_s 0.5 < min 1.0"]
    assert lt.violations(metrics, {"ttfa_s_p95_max": 1}) == [
        "ttfa_s_p95 not measured (budget max 1)"
    ]


def test_cli_requires_a_key_for_remote_urls_only():
    env = {"PATH": "/usr/bin:/bin"}
    script = str(ROOT / "scripts" / "deploy" / "smoke_test.py")
    proc = subprocess.run([sys.executable, script, "tts", "wss://model-x.api.baseten.co/x"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 2 and "BASETEN_API_KEY is required" in proc.stderr
    proc = subprocess.run([sys.executable, script, "tts", "ws://127.0.0.1:9/v1/websocket", "--json"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 1 and json.loads(proc.stdout)["ok"] is False


@pytest.mark.e2e
def test_e2e_stt_smoke_against_whisper_truss(whisper_server):
    result = st.run("stt", whisper_server.ws_url, None)
    assert result.ok, result.verdict
    assert result.metrics["wer"] <= st.SMOKE["stt"]["budgets"]["wer_max"]
    assert result.metrics["final_latency_s_values"]


@pytest.mark.e2e
def test_e2e_tts_smoke_against_orpheus_truss(orpheus_server):
    result = st.run("tts", orpheus_server.ws_url, None)
    assert result.ok, result.verdict


@pytest.mark.e2e
def test_e2e_http_smoke_posts_togethers_body_and_decodes_the_wav(orpheus_http_server):
    url = f"{orpheus_http_server.http_url}/v1/models/model:predict"
    result = st.run("http", url, None)
    assert result.ok, result.verdict
    assert result.metrics["audio_s"] >= 1.0 and result.metrics["latency_s_p50"] > 0


async def test_503_at_the_handshake_is_retried_and_the_key_sent_to_remote_hosts_only():
    import asyncio

    async with ws_server(tts_handler(ONE_SECOND_PCM * 2), reject=[503, 503]) as (url, headers):
        result = await asyncio.to_thread(st.run, "tts", url, "secret-key")
    assert result.ok, result.verdict
    assert len(headers) == 3 and all("authorization" not in h for h in headers)  # local
