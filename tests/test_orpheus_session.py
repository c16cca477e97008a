"""TTSSession state machine with a fake WebSocket and a fake synthesizer (no server, no model)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
from orpheus_tts.session import TTSSession
from orpheus_tts.settings import SessionLimits
from speech_common.ws import CloseCode, SessionGate

CONFIG = {"voice": "tara", "max_tokens": 2000, "buffer_size": 10}


@dataclasses.dataclass(frozen=True)
class FakeParams:
    temperature: float = 0.6
    top_p: float = 0.8
    repetition_penalty: float = 1.3
    max_tokens: int = 2000


class FakeWebSocket:
    """The slice of Starlette's WebSocket the session uses, driven from the test."""

    def __init__(self) -> None:
        self._incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.audio: list[bytes] = []
        self.json_frames: list[dict[str, Any]] = []
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.Event()
        self.first_audio = asyncio.Event()
        self.broken = False  # sends fail, as on a dropped TCP connection
        self.send_gate: asyncio.Event | None = None  # a slow client: sends wait for it

    def text(self, text: str) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "text": text})

    def binary(self, data: bytes) -> None:
        self._incoming.put_nowait({"type": "websocket.receive", "bytes": data})

    def words(self, text: str) -> None:
        for word in text.split():
            self.text(word)

    def disconnect(self, code: int = 1001) -> None:
        self._incoming.put_nowait({"type": "websocket.disconnect", "code": code})

    async def receive(self) -> dict[str, Any]:
        return await self._incoming.get()

    async def send_bytes(self, data: bytes) -> None:
        if self.broken:
            raise RuntimeError("socket is gone")
        if self.send_gate is not None:
            await self.send_gate.wait()
        self.audio.append(data)
        self.first_audio.set()

    async def send_json(self, data: dict[str, Any]) -> None:
        self.json_frames.append(data)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.close_code is not None:
            raise RuntimeError("already closed")
        self.close_code, self.close_reason = code, reason
        self.closed.set()


@dataclasses.dataclass
class Call:
    text: str
    voice: str
    params: Any
    request_id: str
    closed: bool = False
    finished: bool = False


class FakeSynthesizer:
    """Yields ``chunks_per_text`` PCM chunks per generation; each chunk names its text."""

    def __init__(
        self,
        chunks_per_text: int = 3,
        delay_s: float = 0.0,
        fail_on: str | None = None,
        gate: asyncio.Event | None = None,
    ) -> None:
        self.chunks_per_text = chunks_per_text
        self.delay_s = delay_s
        self.fail_on = fail_on
        self.gate = gate  # when set, every generation stops after its first chunk until opened
        self.calls: list[Call] = []
        self.started = asyncio.Event()

    def max_tokens_for_text(self, text: str, client_max_tokens: int) -> int:
        return min(client_max_tokens, 100 + 10 * len(text))

    async def stream(
        self, text: str, voice: str, params: Any, request_id: str
    ) -> AsyncIterator[bytes]:
        call = Call(text, voice, params, request_id)
        self.calls.append(call)
        self.started.set()
        try:
            for i in range(self.chunks_per_text):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if self.fail_on is not None and self.fail_on in text and i == 1:
                    raise RuntimeError("engine exploded")
                yield f"[{text}#{i}]".encode()
                if self.gate is not None and i == 0:
                    await self.gate.wait()
            call.finished = True
        finally:
            call.closed = True


def _session(
    ws: FakeWebSocket, synth: FakeSynthesizer, limits: SessionLimits | None = None
) -> Coroutine[Any, Any, None]:
    return TTSSession(synth, FakeParams(), VOICES, DEFAULT_VOICE, limits).websocket(ws)


def _audio_text(ws: FakeWebSocket) -> str:
    return b"".join(ws.audio).decode()


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _wait_for(predicate: Any, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.001)


async def test_round_trip_in_order_and_closes_normally() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer()
    ws.text(json.dumps({**CONFIG, "voice": "leo", "temperature": 0.9}))
    ws.words("Hello there, my friend. How are you today? Fine thanks")
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 5)

    texts = ["Hello there, my friend.", "How are you today?", "Fine thanks"]
    assert [c.text for c in synth.calls] == texts
    expected = "".join(f"[{t}#{i}]" for t in texts for i in range(3))
    assert _audio_text(ws) == expected
    assert ws.close_code == CloseCode.NORMAL and ws.json_frames == []
    assert len({c.request_id for c in synth.calls}) == 3
    assert all(c.voice == "leo" for c in synth.calls)
    params = synth.calls[0].params
    assert params.temperature == 0.9 and params.top_p == 0.8
    assert params.max_tokens == min(2000, 100 + 10 * len(texts[0]))


async def test_trailing_words_are_spoken_at_end() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer(chunks_per_text=1)
    ws.text(json.dumps({**CONFIG, "buffer_size": 50}))
    ws.words("no sentence end here")
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 5)
    assert [c.text for c in synth.calls] == ["no sentence end here"]
    assert _audio_text(ws) == "[no sentence end here#0]"


async def test_empty_session_closes_normally() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer()
    ws.text(json.dumps(CONFIG))
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 5)
    assert synth.calls == [] and ws.audio == [] and ws.close_code == CloseCode.NORMAL


async def test_generation_starts_before_end_of_input() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer()
    ws.text(json.dumps(CONFIG))
    ws.words("First sentence here. Second")
    task = asyncio.create_task(_session(ws, synth))
    # Audio streams while the client is still typing: no __END__ has been sent yet.
    await asyncio.wait_for(ws.first_audio.wait(), 2)
    assert synth.calls[0].text == "First sentence here."
    ws.words("sentence here.")
    ws.text("__END__")
    await asyncio.wait_for(task, 5)
    assert [c.text for c in synth.calls] == ["First sentence here.", "Second sentence here."]


async def test_next_generation_starts_while_current_is_sent_with_bounded_lookahead() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer()
    ws.send_gate = asyncio.Event()  # the client reads slowly: audio of "One." is still queued
    ws.text(json.dumps(CONFIG))
    ws.words("One. Two. Three. Four.")
    ws.text("__END__")
    limits = SessionLimits(lookahead_generations=1, engine_generations=1)
    task = asyncio.create_task(_session(ws, synth, limits))
    await _wait_for(lambda: len(synth.calls) >= 2 and synth.calls[1].finished)
    await asyncio.sleep(0.05)
    # "One." is generated but not yet sent; "Two." was generated meanwhile; no third one yet.
    assert [c.text for c in synth.calls] == ["One.", "Two."]
    assert ws.audio == []
    ws.send_gate.set()
    await asyncio.wait_for(task, 5)
    assert [c.text for c in synth.calls] == ["One.", "Two.", "Three.", "Four."]
    assert _audio_text(ws) == "".join(
        f"[{t}#{i}]" for t in ("One.", "Two.", "Three.", "Four.") for i in range(3)
    )


@pytest.mark.parametrize("engine_generations", [1, 2])
async def test_engine_generations_per_session(engine_generations: int) -> None:
    gate = asyncio.Event()  # generations stop after their first chunk until opened
    ws, synth = FakeWebSocket(), FakeSynthesizer(gate=gate)
    ws.text(json.dumps(CONFIG))
    ws.words("One. Two. Three.")
    ws.text("__END__")
    limits = SessionLimits(lookahead_generations=2, engine_generations=engine_generations)
    task = asyncio.create_task(_session(ws, synth, limits))
    await _wait_for(lambda: len(synth.calls) >= engine_generations)
    await asyncio.sleep(0.05)
    # While "One." is still generating, only engine_generations requests are in the engine.
    assert len(synth.calls) == engine_generations
    assert not synth.calls[0].finished
    gate.set()
    await asyncio.wait_for(task, 5)
    assert [c.text for c in synth.calls] == ["One.", "Two.", "Three."]


async def test_disconnect_mid_stream_aborts_generations_at_once() -> None:
    gate = asyncio.Event()  # never opened: generations hang after their first chunk
    ws, synth = FakeWebSocket(), FakeSynthesizer(gate=gate)
    aborted = _metric("orpheus_aborted_generations_total", reason="client_gone")
    active = _metric("orpheus_active_generations")
    aborts_timed = _metric("orpheus_abort_seconds_count")
    ws.text(json.dumps(CONFIG))
    ws.words("One. Two. Three")
    limits = SessionLimits(engine_generations=2)
    task = asyncio.create_task(_session(ws, synth, limits))
    await _wait_for(lambda: len(synth.calls) == 2)
    assert _metric("orpheus_active_generations") == active + 2
    started = time.monotonic()
    ws.disconnect()
    await asyncio.wait_for(task, 1)
    assert time.monotonic() - started < 0.1
    assert all(c.closed and not c.finished for c in synth.calls)
    assert _metric("orpheus_aborted_generations_total", reason="client_gone") == aborted + 2
    assert _metric("orpheus_active_generations") == active
    assert _metric("orpheus_abort_seconds_count") == aborts_timed + 1
    assert ws.close_code is None  # nobody left to close to


async def test_disconnect_after_end_before_any_audio_is_noticed() -> None:
    gate = asyncio.Event()
    ws, synth = FakeWebSocket(), FakeSynthesizer(delay_s=10.0, gate=gate)
    ws.text(json.dumps(CONFIG))
    ws.words("Slow one.")
    ws.text("__END__")
    task = asyncio.create_task(_session(ws, synth))
    await asyncio.wait_for(synth.started.wait(), 1)
    ws.disconnect()
    await asyncio.wait_for(task, 1)
    assert synth.calls[0].closed and not synth.calls[0].finished


async def test_failed_send_aborts_generation() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer(chunks_per_text=50, delay_s=0.001)
    ws.broken = True
    ws.text(json.dumps(CONFIG))
    ws.words("Hello world.")
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 2)
    assert synth.calls[0].closed and not synth.calls[0].finished


async def test_engine_failure_sends_error_and_1011_and_aborts_the_rest() -> None:
    gate = asyncio.Event()
    ws, synth = FakeWebSocket(), FakeSynthesizer(fail_on="Boom", gate=gate)
    gate.set()
    failed = _metric("orpheus_failed_generations_total")
    ws.text(json.dumps(CONFIG))
    ws.words("Boom now. Fine later. And more")
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 5)
    assert ws.close_code == CloseCode.INTERNAL_ERROR
    assert ws.json_frames[-1]["body"]["error_type"] == "engine_error"
    message = ws.json_frames[-1]["body"]["message"]
    assert synth.calls[0].request_id in message and "RuntimeError" in message
    assert "engine exploded" not in message  # internals stay in the server log
    assert _metric("orpheus_failed_generations_total") == failed + 1
    assert all(c.closed for c in synth.calls)
    assert "Fine later.#2" not in _audio_text(ws)


@pytest.mark.parametrize(
    ("frames", "error_type"),
    [
        (["not json"], "invalid_json"),
        ([json.dumps({"voice": "nobody"})], "invalid_config"),
        ([json.dumps({"max_tokens": "lots"})], "invalid_config"),
        ([json.dumps({"buffer_size": -1})], "invalid_config"),
        ([b"\x00\x01"], "invalid_config"),
        ([json.dumps(CONFIG), "hello", b"\x00\x01"], "unsupported_frame"),
        ([json.dumps(CONFIG), "x" * 101], "frame_too_large"),
        ([json.dumps(CONFIG)] + ["word"] * 60, "session_too_large"),
        ([json.dumps(CONFIG), "hi", "__END__", "more"], "frame_after_end"),
    ],
)
async def test_bad_input_gets_typed_error_and_1008(frames: list[Any], error_type: str) -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer(chunks_per_text=1, delay_s=0.5)
    for frame in frames:
        ws.binary(frame) if isinstance(frame, bytes) else ws.text(frame)
    limits = SessionLimits(max_frame_chars=100, max_session_chars=200)
    await asyncio.wait_for(_session(ws, synth, limits), 5)
    assert ws.close_code == CloseCode.POLICY_VIOLATION
    assert len(ws.json_frames) == 1
    assert ws.json_frames[0]["type"] == "error"
    assert ws.json_frames[0]["body"]["error_type"] == error_type
    assert ws.json_frames[0]["body"]["recoverable"] is False
    assert all(c.closed for c in synth.calls)


async def test_config_timeout() -> None:
    ws, synth = FakeWebSocket(), FakeSynthesizer()
    await asyncio.wait_for(_session(ws, synth, SessionLimits(first_frame_timeout_s=0.05)), 2)
    assert ws.close_code == CloseCode.POLICY_VIOLATION
    assert ws.json_frames[0]["body"]["error_type"] == "timeout"


async def test_time_to_first_audio_is_observed() -> None:
    before = _metric("orpheus_time_to_first_audio_seconds_count")
    ws, synth = FakeWebSocket(), FakeSynthesizer(chunks_per_text=2)
    ws.text(json.dumps(CONFIG))
    ws.words("A sentence. Another one.")
    ws.text("__END__")
    await asyncio.wait_for(_session(ws, synth), 5)
    assert _metric("orpheus_time_to_first_audio_seconds_count") == before + 1


async def test_sessions_are_independent() -> None:
    good_ws, bad_ws = FakeWebSocket(), FakeWebSocket()
    synth = FakeSynthesizer(fail_on="Boom", delay_s=0.005)
    good_ws.text(json.dumps(CONFIG))
    good_ws.words("Hello there. General Kenobi.")
    good_ws.text("__END__")
    bad_ws.text(json.dumps(CONFIG))
    bad_ws.words("Boom goes the engine.")
    bad_ws.text("__END__")
    await asyncio.wait_for(asyncio.gather(_session(good_ws, synth), _session(bad_ws, synth)), 5)
    assert bad_ws.close_code == CloseCode.INTERNAL_ERROR
    assert good_ws.close_code == CloseCode.NORMAL
    assert _audio_text(good_ws).endswith("[General Kenobi.#2]")


async def test_overloaded_replica_refuses_with_1013() -> None:
    gate = SessionGate(max_sessions=1)
    gated = asyncio.Event()
    first_ws, second_ws = FakeWebSocket(), FakeWebSocket()
    synth = FakeSynthesizer(gate=gated)
    first_ws.text(json.dumps(CONFIG))
    first_ws.words("Busy now.")
    first_ws.text("__END__")
    first = asyncio.create_task(
        TTSSession(synth, FakeParams(), VOICES, DEFAULT_VOICE, gate=gate).websocket(first_ws)
    )
    await asyncio.wait_for(synth.started.wait(), 1)
    await asyncio.wait_for(
        TTSSession(synth, FakeParams(), VOICES, DEFAULT_VOICE, gate=gate).websocket(second_ws), 1
    )
    assert second_ws.close_code == CloseCode.TRY_AGAIN_LATER
    assert second_ws.json_frames[0]["body"]["error_type"] == "overloaded"
    gated.set()
    await asyncio.wait_for(first, 2)
    assert first_ws.close_code == CloseCode.NORMAL
    assert gate.active == 0


def test_limits_from_metadata() -> None:
    limits = SessionLimits.from_metadata(
        {"max_frame_chars": 10, "lookahead_generations": "2", "orpheus_engine": "vllm"},
        environ={},
    )
    assert limits.max_frame_chars == 10 and limits.lookahead_generations == 2
    with pytest.raises(ValueError):
        SessionLimits.from_metadata({"lookahead_generations": -1}, environ={})


def test_config_yaml_session_limits_are_the_defaults() -> None:
    # The e2e tests read limits from SessionLimits(); the served config must agree with it.
    import pathlib

    import yaml

    config = pathlib.Path(__file__).resolve().parents[1] / "orpheus_tts_truss" / "config.yaml"
    metadata = yaml.safe_load(config.read_text())["model_metadata"]
    assert "max_chunk_chars" in metadata
    assert SessionLimits.from_metadata(metadata, environ={}) == SessionLimits()
