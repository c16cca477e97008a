"""The typed TTS core without any wire format: typed inputs in, typed events and job commands
out, results and acknowledgements handed back with the generation that asked; FFmpeg's formats
encoded in encode jobs (the encoder handed over and back, never on the loop); the HTTP
flavour's session on its in-process exchange (no socket, no server); the driver's transports
and job handles."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from typing import Any

import numpy as np
import pytest

from orpheus_tts.audio_format import (
    ENCODE_WORKER,
    AudioEncoder,
    AudioFormat,
    EncodeJob,
    EncoderOp,
    EncodeService,
    run_encode_job,
)
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
from orpheus_tts.session import SynthJobs, TTSSession
from orpheus_tts.settings import SessionLimits
from speech_common.driver import (
    Cancel,
    Close,
    Discard,
    Send,
    StartStream,
    StreamChunk,
    StreamDone,
    Submit,
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


# -- encoding off the event loop: FFmpeg's formats in encode jobs ------------------------------------
def _pcm_chunks(n: int, seed: int = 0) -> list[bytes]:
    """Speech-like s16le chunks of one SNAC frame (2048 samples, 85 ms at 24 kHz) each."""
    from orpheus_tts.tokens import SAMPLES_PER_FRAME

    rng = np.random.default_rng(seed)
    t = np.arange(n * SAMPLES_PER_FRAME) / 24000
    x = 0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t))
    x += 0.02 * rng.standard_normal(len(t))
    pcm = (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()
    size = 2 * SAMPLES_PER_FRAME
    return [pcm[i : i + size] for i in range(0, len(pcm), size)]


def _direct(fmt: str, chunks: list[bytes]) -> bytes:
    """The same chunks through an encoder called directly (as the core did on the loop)."""
    encoder = AudioEncoder(AudioFormat(fmt), 24000)
    return b"".join(encoder.encode(c) for c in chunks) + encoder.finish()


class Worker:
    """The encode worker, run by hand: the jobs the core submits, answered when asked."""

    def __init__(self, tts: TtsCore) -> None:
        self.tts = tts
        self.jobs: list[Submit] = []
        self.audio: list[bytes] = []
        self.events: list[Any] = []

    def take(self, outputs: list[Any]) -> None:
        for out in outputs:
            if isinstance(out, Submit):
                assert out.worker == ENCODE_WORKER and not self.jobs  # one job at a time
                self.jobs.append(out)
            elif isinstance(out, Audio):
                self.audio.append(out.data)
                if out.ack is not None:
                    self.take(self.tts.on_sent(out.ack, 0.0))
            else:
                self.events.append(out)

    def run(self) -> EncodeJob:
        job = self.jobs.pop(0)
        self.take(self.tts.on_result(job.job_id, run_encode_job(job.payload), 0.0))
        return job.payload

    def run_all(self) -> None:
        while self.jobs:
            self.run()


@pytest.mark.parametrize("fmt", ["mp3", "mulaw", "opus"])
def test_an_ffmpeg_format_is_encoded_in_jobs_and_sounds_as_before(fmt: str) -> None:
    from tests.test_orpheus_audio_format import decode

    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format=fmt,
                                sample_rate=24000), 0.0)  # fmt: skip
    worker = Worker(tts)
    chunks = _pcm_chunks(6)
    tts.append("Hello there.", 0.0)
    (start,) = tts.flush("t1", 0.0)
    worker.take(tts.on_result(start.job_id, StreamChunk(chunks[0]), 0.0))
    (job,) = worker.jobs  # the encoder went with it: no audio on the loop yet
    assert worker.audio == [] and job.payload.ops == (chunks[0],)
    assert [type(e) for e in worker.events] == [AudioStart]  # due before the audio: at once
    for chunk in chunks[1:3]:  # chunks that come meanwhile wait for the encoder's return
        worker.take(tts.on_result(start.job_id, StreamChunk(chunk), 0.0))
    assert len(worker.jobs) == 1
    worker.run()
    assert worker.audio  # the first chunk's bytes (lame holds back its delay)
    assert worker.jobs[0].payload.ops == tuple(chunks[1:3])  # in order, in one job
    for chunk in chunks[3:]:
        worker.take(tts.on_result(start.job_id, StreamChunk(chunk), 0.0))
    worker.take(tts.on_result(start.job_id, StreamDone(), 0.0))
    worker.run_all()
    assert [type(e) for e in worker.events] == [AudioStart, AudioDone, FlushDone]
    assert worker.events[1].end_s == round(len(b"".join(chunks)) / 2 / 24000, 4)
    expected = _direct(fmt, chunks)
    if fmt == "opus":  # an Ogg stream's serial number is random: the same audio, not bytes
        np.testing.assert_array_equal(
            decode(AudioFormat.OPUS, 24000, b"".join(worker.audio)),
            decode(AudioFormat.OPUS, 24000, expected),
        )
    else:
        assert b"".join(worker.audio) == expected
    session_done, ended = [*worker.events[3:], *tts.end(0.0)]  # no stream open: no job
    assert isinstance(session_done, SessionDone) and ended == Ended() and tts.done


def test_clear_while_the_encoder_is_out_drops_its_audio_and_resets_it() -> None:
    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format="mp3"), 0.0)
    worker = Worker(tts)
    chunks = _pcm_chunks(4)
    tts.append("Stale words.", 0.0)
    (stale,) = tts.flush(None, 0.0)
    worker.take(tts.on_result(stale.job_id, StreamChunk(chunks[0]), 0.0))
    worker.run()  # its first chunk's bytes are out
    worker.take(tts.on_result(stale.job_id, StreamChunk(chunks[1]), 0.0))
    heard = b"".join(worker.audio)
    # Barge-in while the second chunk is being encoded: answered at once, no waiting for it.
    cancel, discard, cleared = tts.clear("c", 0.0)
    assert (cancel, discard) == (Cancel(stale.job_id), Discard(frozenset({stale.job_id})))
    assert cleared == Cleared(id="c", generations_aborted=1)
    worker.run()  # the encoder comes back; its output is stale and dropped
    assert b"".join(worker.audio) == heard
    assert worker.run().ops == (EncoderOp.RESET,)  # the codec's held-back audio dropped
    tts.append("Fresh words.", 0.0)
    (fresh,) = tts.flush("f", 0.0)
    for chunk in chunks[2:]:
        worker.take(tts.on_result(fresh.job_id, StreamChunk(chunk), 0.0))
        worker.run_all()
    worker.take(tts.on_result(fresh.job_id, StreamDone(), 0.0))
    worker.run_all()
    assert b"".join(worker.audio) == heard + _direct("mp3", chunks[2:])  # a new stream
    assert worker.events[-1] == FlushDone(id="f")


def test_a_turns_tail_and_flush_done_stay_before_a_clear_answer() -> None:
    """A clear while a heard turn's codec tail is being encoded: its tail and flush_done still
    come first, as they did when the tail was encoded on the loop."""
    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format="mp3"), 0.0)
    worker = Worker(tts)
    tts.append("One turn.", 0.0)
    (start,) = tts.flush("t1", 0.0)
    worker.take(tts.on_result(start.job_id, StreamChunk(_pcm_chunks(1)[0]), 0.0))
    worker.run()
    worker.take(tts.on_result(start.job_id, StreamDone(), 0.0))
    assert worker.jobs[0].payload.ops == (EncoderOp.FINISH,)  # the turn's tail, out
    # Nothing alive: the answer waits behind the tail.
    assert tts.clear("c", 0.0) == [Discard(frozenset())]
    worker.run()
    assert [type(e) for e in worker.events] == [AudioStart, AudioDone, FlushDone, Cleared]
    assert worker.jobs == []  # the stream was finished: the reset has nothing to do


@pytest.mark.parametrize("fmt", ["pcm_s16le", "pcm_f32le", "wav"])
def test_pcm_and_wav_need_no_encode_job(fmt: str) -> None:
    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format=fmt,
                                sample_rate=48000), 0.0)  # fmt: skip
    tts.append("Hello there.", 0.0)
    (start,) = tts.flush("t1", 0.0)
    began, audio = tts.on_result(start.job_id, StreamChunk(_pcm_chunks(1)[0]), 0.0)
    assert isinstance(began, AudioStart) and isinstance(audio, Audio)  # at once, as before
    assert not any(isinstance(o, Submit) for o in tts.clear("c", 0.0))


def test_a_failed_encode_job_ends_the_session_with_1011() -> None:
    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format="mp3"), 0.0)
    tts.append("Hello there.", 0.0)
    (start,) = tts.flush("t1", 0.0)
    _, submit = tts.on_result(start.job_id, StreamChunk(_pcm_chunks(1)[0]), 0.0)
    cancel, ended = tts.on_result(submit.job_id, RuntimeError("libmp3lame broke"), 0.0)
    assert cancel == Cancel(start.job_id)
    assert ended.error.error_type == "internal_error" and ended.error.close_code == 1011
    assert tts.done and tts.outcome == "internal_error"


def test_a_session_ending_with_its_encoder_out_cancels_the_job() -> None:
    tts = core()
    tts.configure(SessionConfig(events=True, buffer_size=10, response_format="opus"), 0.0)
    tts.append("Hello there.", 0.0)
    (start,) = tts.flush("t1", 0.0)
    _, submit = tts.on_result(start.job_id, StreamChunk(_pcm_chunks(1)[0]), 0.0)
    assert set(tts.on_disconnect(0.0)) == {Cancel(start.job_id), Cancel(submit.job_id)}
    late = run_encode_job(submit.payload)  # the worker may still finish it: nobody listens
    assert tts.on_result(submit.job_id, late, 0.0) == []


async def test_encode_service_runs_jobs_off_the_loop_and_drops_a_stream() -> None:
    import threading

    service = EncodeService(threads=2).start()
    try:
        chunks = _pcm_chunks(3)
        job = EncodeJob(AudioEncoder(AudioFormat.MP3, 24000), (*chunks, EncoderOp.FINISH))
        jobs = SynthJobs(FakeSynthesizer(), encoder=service)
        result = await jobs.submit(Submit("h", ENCODE_WORKER, job), "s1")
        assert result.encoder is job.encoder and b"".join(result.outputs) == _direct("mp3", chunks)
        assert service.healthy
        names = {t.name for t in threading.enumerate()}
        assert {f"{ENCODE_WORKER}-0", f"{ENCODE_WORKER}-1"} <= names
        jobs.forget("s1")  # nothing queued: nothing dropped, no error
        with pytest.raises(RuntimeError):
            SynthJobs(FakeSynthesizer()).submit(Submit("h", ENCODE_WORKER, job), "s2")
    finally:
        service.stop()
    assert not service.healthy
