"""The typed TTS core without any wire format: typed inputs in, typed events and job commands
out, results and acknowledgements handed back with the generation that asked; the HTTP
flavour's session on its in-process exchange (no socket, no server); the driver's transports
and job handles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from typing import Any

import pytest

from orpheus_tts.dialects.http import speech_chunks
from orpheus_tts.events import Audio, Ended, Rejected
from orpheus_tts.http_speech import HttpError, parse_request
from orpheus_tts.prompt import DEFAULT_VOICE, VOICES
from orpheus_tts.protocol import TtsCore
from orpheus_tts.schema import (
    AudioDone,
    AudioStart,
    Cleared,
    FlushDone,
    SessionConfig,
    SessionCreated,
    SessionDone,
    UpdateMessage,
    session_config,
)
from orpheus_tts.session import TTSSession
from orpheus_tts.settings import SessionLimits
from speech_common.driver import (
    Cancel,
    Close,
    Discard,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
    run_transport,
)
from tests.test_orpheus_protocol import Params
from tests.test_orpheus_session import FakeParams, FakeSynthesizer

EVENTS = SessionConfig(events=True, buffer_size=10)


def core(limits: SessionLimits | None = None) -> TtsCore:
    made = TtsCore(limits or SessionLimits(), VOICES, DEFAULT_VOICE, Params(), lambda t, m: m, "s")
    assert made.start(0.0) == []
    return made


def test_a_turn_in_typed_calls_and_events() -> None:
    tts = core()
    (created,) = tts.configure(EVENTS, 0.0)
    assert created == SessionCreated(session_id="s", voice="tara", response_format="pcm_s16le",
                                     sample_rate=24000)  # fmt: skip
    assert tts.append("Hello there.", 0.0) == []  # a sentence waits for the next word
    (start,) = tts.flush("t1", 0.0)
    assert isinstance(start, StartStream) and start.payload.text == "Hello there."
    generation = start.job_id  # the generation is its own handle
    began, audio = tts.on_result(generation, StreamChunk(b"\x01\x00"), 0.0)
    assert isinstance(began, AudioStart) and began.generation == 1
    assert audio == Audio(b"\x01\x00", ack=generation)
    assert tts.on_result(generation, StreamDone(), 0.0) == []  # its audio is not written yet
    done, flushed = tts.on_sent(audio.ack, 0.0)
    assert isinstance(done, AudioDone) and flushed == FlushDone(id="t1")
    session_done, ended = tts.end(0.0)
    assert session_done == SessionDone(generations=1, audio_s=0.0)
    assert ended == Ended() and tts.done and tts.outcome == "ok"


def test_bad_inputs_are_rejected_or_end_the_session() -> None:
    tts = core()
    tts.configure(EVENTS, 0.0)
    (rejected,) = tts.update(UpdateMessage(type="update", voice="nobody"), 0.0)
    assert isinstance(rejected, Rejected) and rejected.error.error_type == "invalid_message"
    (start,) = tts.append("A whole sentence. And", 0.0)
    *cancels, ended = tts.append("x" * 5000, 0.0)
    assert cancels == [Cancel(start.job_id)]
    assert isinstance(ended, Ended) and ended.error.error_type == "frame_too_large"
    assert tts.done and tts.append("more", 0.0) == []


def test_clear_cancels_by_handle_and_late_results_are_ignored() -> None:
    tts = core(SessionLimits(engine_generations=2))
    tts.configure(EVENTS, 0.0)
    tts.append("One sentence here.", 0.0)
    (first,) = tts.flush(None, 0.0)
    tts.append("Another one.", 0.0)
    (second,) = tts.flush(None, 0.0)
    cancel_first, cancel_second, discard, cleared = tts.clear(7, 0.0)
    assert (cancel_first, cancel_second) == (Cancel(first.job_id), Cancel(second.job_id))
    assert discard == Discard(frozenset({first.job_id, second.job_id}))
    assert cleared == Cleared(id=7, generations_aborted=2)
    assert tts.on_result(first.job_id, StreamChunk(b"late"), 0.0) == []
    assert tts.on_sent(first.job_id, 0.0) == []


def test_the_end_marker_in_appended_text_ends_the_input() -> None:
    """``__END__`` alone ends the input whatever carried it, as it always has."""
    tts = core()
    tts.configure(EVENTS, 0.0)
    session_done, ended = tts.append(" __END__ ", 0.0)
    assert isinstance(session_done, SessionDone) and ended == Ended()


def test_session_config_from_fields_is_validated_like_a_first_frame() -> None:
    from speech_common.ws import ProtocolError

    config = session_config({"events": True, "voice": " Leo "}, VOICES, DEFAULT_VOICE)
    assert config.voice == "leo" and config.events
    assert session_config({}, VOICES, DEFAULT_VOICE).voice == DEFAULT_VOICE
    with pytest.raises(ProtocolError) as info:
        session_config({"temprature": 0.5}, VOICES, DEFAULT_VOICE)
    assert info.value.error_type == "invalid_config"


# -- the HTTP flavour, in process ----------------------------------------------------------------
def _http_session(synth: FakeSynthesizer) -> TTSSession:
    return TTSSession(synth, FakeParams(), VOICES, DEFAULT_VOICE)


async def test_http_request_streams_its_audio_then_ends() -> None:
    synth = FakeSynthesizer(chunks_per_text=2)
    request = parse_request(b'{"input": "Hello there. Bye.", "response_format": "raw"}')
    parts = [part async for part in speech_chunks(request, _http_session(synth))]
    assert b"".join(parts) == b"[Hello there.#0][Hello there.#1][Bye.#0][Bye.#1]"
    assert all(call.closed for call in synth.calls)


async def test_http_request_refused_by_the_core_is_an_http_error() -> None:
    request = parse_request(b'{"input": "Hi", "voice": "nobody"}')
    with pytest.raises(HttpError) as info:
        [part async for part in speech_chunks(request, _http_session(FakeSynthesizer()))]
    assert (info.value.status, info.value.error_type) == (400, "invalid_config")


async def test_http_client_leaving_aborts_the_generation() -> None:
    gate = asyncio.Event()  # never opened: the generation hangs after its first chunk
    synth = FakeSynthesizer(gate=gate)
    request = parse_request(
        b'{"input": "A long answer.", "stream": true, "response_format": "raw"}'
    )
    chunks = speech_chunks(request, _http_session(synth))
    assert await anext(chunks) == b"[A long answer.#0]"
    await asyncio.wait_for(chunks.aclose(), 2)  # the response went away
    assert synth.calls[0].closed and not synth.calls[0].finished


# -- the driver: any transport, any hashable handle, explicit outbox weights -------------------------
class ListTransport:
    def __init__(self, frames: list[str]) -> None:
        self.frames = list(frames)
        self.sent: list[Any] = []
        self.closed: tuple[int, Any] | None = None

    async def receive(self) -> str | bytes | None:
        if self.frames:
            return self.frames.pop(0)
        await asyncio.Event().wait()  # the client stays until the core closes
        return None

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    async def close(self, code: int, reason: str = "", error: Any = None) -> None:
        self.closed = (code, error)


class Handle:  # a core's own object as a job id (hashed by identity)
    pass


class HandleCore:
    """Starts one stream keyed by a ``Handle``; echoes each item as a typed message."""

    def __init__(self) -> None:
        self.handle = Handle()
        self.done = False
        self.next_deadline = None
        self.results: list[tuple[Hashable, Any]] = []

    def start(self, now: float) -> list[Any]:
        return []

    def on_text(self, text: str, now: float) -> list[Any]:
        return [StartStream(self.handle, "w", None)]

    def on_bytes(self, data: bytes, now: float) -> list[Any]:
        return []

    def on_result(self, job_id: Hashable, result: Any, now: float) -> list[Any]:
        self.results.append((job_id, result))
        if isinstance(result, StreamChunk):
            return [Send(("item", result.item), size=1)]  # any object, any weight
        self.done = True
        return [Close(1000)]

    def on_sent(self, ack: Any, now: float) -> list[Any]:
        return []

    def on_timer(self, now: float) -> list[Any]:
        return []

    def on_disconnect(self, now: float) -> list[Any]:
        self.done = True
        return []


class TwoItems:
    async def stream(self, command: StartStream, stream_id: Hashable) -> AsyncIterator[int]:
        for i in range(2):
            yield i

    def submit(self, command: Any, stream_id: Hashable) -> Any:
        raise NotImplementedError

    def forget(self, stream_id: Hashable) -> None:
        pass


async def test_driver_runs_a_core_on_any_transport_with_object_handles() -> None:
    transport, handle_core = ListTransport(["go"]), HandleCore()
    clean = await asyncio.wait_for(
        run_transport(transport, handle_core, TwoItems(), "s", lambda: None), 5
    )
    assert clean and transport.sent == [("item", 0), ("item", 1)]
    assert transport.closed == (1000, None)
    assert all(job is handle_core.handle for job, _ in handle_core.results)


def test_send_weighs_bytes_by_default_and_anything_else_only_when_told() -> None:
    assert Send(b"abc").outbox_bytes == 3
    assert Send("text").outbox_bytes == 0 and Send({"a": 1}).outbox_bytes == 0
    assert Send("base64 audio", size=12).outbox_bytes == 12
