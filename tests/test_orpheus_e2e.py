"""Orpheus TTS through the real Truss server (scripts/local/serve.py --dummy-weights) over WebSockets.

The tests' own sockets use websockets, as the tooling does; ``published_client`` is Baseten's
published client, written with aiohttp and kept as published (docs/tts.md: it works unchanged)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from typing import Any

import aiohttp
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from orpheus_tts.schema import MAX_TOKENS_LIMIT
from orpheus_tts.settings import SessionLimits
from orpheus_tts.tokens import BYTES_PER_SAMPLE, SAMPLES_PER_FRAME

pytestmark = pytest.mark.e2e

BYTES_PER_FRAME = SAMPLES_PER_FRAME * BYTES_PER_SAMPLE
# Small budgets keep the CPU dummy engine quick: 70 tokens = 10 frames ≈ 0.85 s of audio.
SHORT_CONFIG = {"voice": "tara", "max_tokens": 70, "buffer_size": 10}
LIMITS = SessionLimits()  # the server runs the config.yaml defaults, which equal these
_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match or match["name"] != name:
            continue
        have = set(filter(None, (match["labels"] or "").split(",")))
        if wanted <= have:
            return float(match["value"])
    return 0.0


async def wait_for_abort(server: Any, before: str, within_s: float, **extra: float) -> str:
    """Poll the server's metrics until a generation was aborted because its client left, no
    session or generation is active (the tests run one at a time) and each ``extra`` counter
    grew; the metrics text then."""
    left_at = time.monotonic()
    while True:
        text = server.metrics_text()
        name = "orpheus_aborted_generations_total"
        if (
            metric(text, name, reason="client_gone") > metric(before, name, reason="client_gone")
            and metric(text, "orpheus_active_generations") == 0
            and metric(text, "orpheus_active_sessions") == 0
            and all(metric(text, counter) > metric(before, counter) for counter in extra)
        ):
            return text
        assert time.monotonic() - left_at < within_s, "the generation was not aborted"
        await asyncio.sleep(0.005)


async def published_client(url: str, text: str, config: dict[str, Any]) -> dict[str, Any]:
    """Baseten's published Orpheus client, unchanged except that it collects instead of playing."""
    played: list[bytes] = []
    texts: list[str] = []
    async with aiohttp.ClientSession() as sess:
        async with sess.ws_connect(url) as ws:
            await ws.send_json(config)
            for word in text.strip().split():
                await ws.send_str(word)
            await ws.send_str("__END__")
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    played.append(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    texts.append(msg.data)
        return {"audio": played, "texts": texts, "close_code": ws.close_code}


async def send_frames(url: str, frames: list[str | bytes]) -> dict[str, Any]:
    """Send raw frames, then read until the server closes (it may close before the last)."""
    audio, texts = [], []
    async with connect(url, compression=None) as ws:
        with contextlib.suppress(ConnectionClosed):  # closed early: what came before is read
            for frame in frames:
                await ws.send(frame)
        with contextlib.suppress(ConnectionClosed):
            async for msg in ws:
                if isinstance(msg, bytes):
                    audio.append(msg)
                else:
                    texts.append(json.loads(msg))
    return {"audio": audio, "errors": texts, "close_code": ws.close_code}


async def test_published_client_round_trip(orpheus_server: Any) -> None:
    before = orpheus_server.metrics_text()
    result = await asyncio.wait_for(
        published_client(orpheus_server.ws_url, "Hello there. How are you today?", SHORT_CONFIG),
        120,
    )
    after = orpheus_server.metrics_text()
    pcm = b"".join(result["audio"])
    assert result["close_code"] == 1000
    assert result["texts"] == []
    assert pcm and len(pcm) % BYTES_PER_SAMPLE == 0
    # Two sentences, two generations, each decoded to whole SNAC frames (head and tail flushed).
    generations = metric(after, "orpheus_generations_total") - metric(
        before, "orpheus_generations_total"
    )
    assert generations == 2
    # Every frame the engine produced is decoded and sent once: head and tail flushed, no repeats.
    frames = metric(after, "orpheus_audio_frames_total") - metric(
        before, "orpheus_audio_frames_total"
    )
    assert frames > 0
    assert len(pcm) == frames * BYTES_PER_FRAME
    assert frames <= generations * (SHORT_CONFIG["max_tokens"] // 7)
    sent = metric(after, "orpheus_audio_bytes_sent_total") - metric(
        before, "orpheus_audio_bytes_sent_total"
    )
    assert sent == len(pcm)
    assert metric(after, "orpheus_time_to_first_audio_seconds_count") > metric(
        before, "orpheus_time_to_first_audio_seconds_count"
    )


async def test_disconnect_mid_stream_aborts_generation(orpheus_server: Any) -> None:
    before = orpheus_server.metrics_text()
    async with connect(orpheus_server.ws_url, compression=None) as ws:
        await ws.send(json.dumps({"voice": "tara", "max_tokens": 2000, "buffer_size": 10}))
        for word in ("A long sentence that keeps the engine busy for a while. " * 3).split():
            await ws.send(word)
        await ws.send("__END__")
        first = await asyncio.wait_for(ws.recv(), 120)
        assert isinstance(first, bytes)
        assert metric(orpheus_server.metrics_text(), "orpheus_active_generations") >= 1
    # The client is gone. Poll until the server shows the abort. The abort histogram is observed
    # once the session has released every generation, just after the counters move.
    text = await wait_for_abort(orpheus_server, before, 5, orpheus_abort_seconds_count=1)
    # Server side: from the disconnect to every engine request released.
    count = metric(text, "orpheus_abort_seconds_count")
    within = metric(text, "orpheus_abort_seconds_bucket", le="0.1")
    assert count > metric(before, "orpheus_abort_seconds_count")
    assert within == count, "an abort took longer than 100 ms"


async def test_eight_concurrent_sessions(orpheus_server: Any) -> None:
    # 28 tokens = 4 frames per session: SNAC on two CPU cores is the slow part here.
    config = {**SHORT_CONFIG, "max_tokens": 28}
    texts = [f"Session number {i} says hello." for i in range(8)]
    before = orpheus_server.metrics_text()
    results = await asyncio.wait_for(
        asyncio.gather(*(published_client(orpheus_server.ws_url, t, config) for t in texts)),
        300,
    )
    after = orpheus_server.metrics_text()
    total = 0
    for result in results:
        pcm = b"".join(result["audio"])
        assert result["close_code"] == 1000 and result["texts"] == []
        assert pcm and len(pcm) % BYTES_PER_FRAME == 0
        total += len(pcm)
    frames = metric(after, "orpheus_audio_frames_total") - metric(
        before, "orpheus_audio_frames_total"
    )
    assert total == frames * BYTES_PER_FRAME


_CONFIG = json.dumps(SHORT_CONFIG)
_WIDE = json.dumps({**SHORT_CONFIG, "buffer_size": 200})
_BIG_WORD = "x" * LIMITS.max_frame_chars
_FRAMES_OVER_SESSION_LIMIT = LIMITS.max_session_chars // LIMITS.max_frame_chars + 1


@pytest.mark.parametrize(
    ("frames", "error_type"),
    [
        pytest.param(["{not json"], "invalid_json", id="non-json"),
        pytest.param([json.dumps({"voice": "nobody"})], "invalid_config", id="unknown-voice"),
        pytest.param([json.dumps({"max_tokens": "many"})], "invalid_config", id="non-numeric"),
        pytest.param(
            [json.dumps({"max_tokens": MAX_TOKENS_LIMIT + 1})], "invalid_config", id="too-many"
        ),
        pytest.param([json.dumps({"buffer_size": 0})], "invalid_config", id="buffer-zero"),
        pytest.param([json.dumps({"top_p": 2.0})], "invalid_config", id="top-p-range"),
        pytest.param([b'{"voice": "tara"}'], "invalid_config", id="binary-config"),
        pytest.param([_CONFIG, "Hello", b"\x01\x02"], "unsupported_frame", id="binary-word"),
        pytest.param([_CONFIG, _BIG_WORD + "y"], "frame_too_large", id="frame-too-large"),
        pytest.param(
            [_WIDE] + [_BIG_WORD] * _FRAMES_OVER_SESSION_LIMIT,
            "session_too_large",
            id="session-too-large",
        ),
    ],
)
async def test_bad_input_gets_error_frame_and_1008(
    orpheus_server: Any, frames: list[str | bytes], error_type: str
) -> None:
    result = await asyncio.wait_for(send_frames(orpheus_server.ws_url, frames), 60)
    assert result["close_code"] == 1008
    assert len(result["errors"]) == 1
    error = result["errors"][0]
    assert error["type"] == "error"
    assert error["body"]["error_type"] == error_type
    assert error["body"]["message"]
    assert error["body"]["recoverable"] is False


async def test_bad_session_does_not_disturb_a_good_one(orpheus_server: Any) -> None:
    good, bad = await asyncio.wait_for(
        asyncio.gather(
            published_client(orpheus_server.ws_url, "All is well here.", SHORT_CONFIG),
            send_frames(orpheus_server.ws_url, [_CONFIG, "Hi", b"\x00"]),
        ),
        120,
    )
    assert bad["close_code"] == 1008
    assert good["close_code"] == 1000 and good["audio"]


# -- a disconnect at every protocol point frees everything, within 1 s ---------------------------
async def _settled(served: Any, within_s: float = 1.0) -> None:
    deadline = time.monotonic() + within_s
    names = ("orpheus_active_sessions", "orpheus_active_generations")
    while True:
        text = await asyncio.to_thread(served.metrics_text)
        values = {name: metric(text, name) for name in names}
        if all(v == 0 for v in values.values()):
            return
        assert time.monotonic() < deadline, f"not freed within {within_s} s: {values}"
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("cut", ["rst", "fin", "clean"])
@pytest.mark.parametrize(
    "point",
    ["before_config", "mid_text", "mid_generation", "mid_generation_mp3", "after_bad_frame"],
)
async def test_disconnect_at_every_point_frees_the_session(
    orpheus_server: Any, point: str, cut: str
) -> None:
    """mid_generation_mp3: mp3 audio, so an encode job holds the session's encoder too."""
    config = {**SHORT_CONFIG, "response_format": "mp3"} if "mp3" in point else SHORT_CONFIG
    async with connect(orpheus_server.ws_url) as ws:
        if point != "before_config":
            await ws.send(json.dumps(config))
        if point.startswith(("mid_text", "mid_generation")):
            for word in "A first sentence to speak. And a second one".split():
                await ws.send(word)
        if point.startswith("mid_generation"):
            await ws.send("__END__")
            assert isinstance(await asyncio.wait_for(ws.recv(), 60), bytes)  # audio flows
        if point == "after_bad_frame":
            await ws.send(b"\x00\x01")
        if cut == "rst":
            ws.transport.abort()
        elif cut == "fin":
            ws.transport.close()
    await _settled(orpheus_server)


async def test_llm_token_deltas_through_the_published_protocol(orpheus_server: Any) -> None:
    """An agent framework streams an LLM's raw deltas as text frames: words and numbers stay
    whole ("unbeliev"+"ably", "3"+"."+"5"), so the server speaks three sentences, not four
    broken generations ("Hello !", "I 'm unbeliev ably …", "The total is 3 .", "5 dollars …")."""
    deltas = ["Hello", "!", " I", "'m", " unbeliev", "ably", " happy", " to", " help", ".",
              " The", " total", " is", " 3", ".", "5", " dollars", ",", " right", "?"]  # fmt: skip
    before = orpheus_server.metrics_text()
    result = await asyncio.wait_for(
        send_frames(orpheus_server.ws_url, [json.dumps(SHORT_CONFIG), *deltas, "__END__"]), 120
    )
    after = orpheus_server.metrics_text()
    assert result["close_code"] == 1000 and result["audio"] and not result["errors"]
    started = metric(after, "orpheus_generations_total") - metric(
        before, "orpheus_generations_total"
    )
    assert started == 3
