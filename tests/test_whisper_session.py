"""StreamingSession state machine with a fake socket and a fake engine (real Silero VAD, no server)."""

from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest

from scripts.clients.stt import frames_of, v1_metadata
from speech_common.vad import SileroVad
from speech_common.ws import SessionGate
from tests.whisper_helpers import sample
from whisper_streaming.engine import JobKind, Segment, TranscribeJob, Transcript
from whisper_streaming.scheduler import Scheduler
from whisper_streaming.session import StreamingSession
from whisper_streaming.settings import WhisperSettings


class FakeEngine:
    """Transcribes every job as 'final N' / 'partial N' (N = audio length in ms)."""

    multilingual = False
    supported_languages = ["en"]

    @staticmethod
    def batch_key(job: TranscribeJob) -> tuple:
        return (job.kind, job.options.prompt, job.options.context)

    def __init__(self) -> None:
        self.jobs: list[TranscribeJob] = []
        self.partial_gate = threading.Event()
        self.partial_gate.set()

    def run(self, jobs: list[TranscribeJob]) -> list[Transcript]:
        if jobs[0].kind is JobKind.PARTIAL:
            self.partial_gate.wait(5)
        self.jobs.extend(jobs)
        word = "final" if jobs[0].kind is JobKind.FINAL else "partial"
        return [
            Transcript(
                [
                    Segment(
                        f"{word} {len(j.audio) * 1000 // 16000}",
                        j.offset_s,
                        j.offset_s + len(j.audio) / 16000,
                        -0.1,
                        0.01,
                    )
                ],
                "en",
                None,
            )
            for j in jobs
        ]


class FakeSocket:
    """Starlette-like: receive() dicts, send_json(), close(); records what the server did."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[dict] = asyncio.Queue()
        self.sent: list[dict] = []
        self.closed: tuple[int, str] | None = None

    def text(self, payload) -> None:
        self.inbox.put_nowait(
            {
                "type": "websocket.receive",
                "text": payload if isinstance(payload, str) else json.dumps(payload),
            }
        )

    def binary(self, data: bytes) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "bytes": data})

    def disconnect(self) -> None:
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})

    async def receive(self) -> dict:
        return await self.inbox.get()

    async def send_json(self, message: dict) -> None:
        self.sent.append(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed = (code, reason)
        self.disconnect()


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
async def scheduler(engine):
    sched = Scheduler(engine, SileroVad(), max_batch=8, vad_max_batch=8).start()
    yield sched
    sched.stop()


def session(ws, scheduler, limit=4, **settings) -> StreamingSession:
    return StreamingSession(ws, scheduler, WhisperSettings(**settings), SessionGate(limit))


def transcripts(ws: FakeSocket, final: bool) -> list[dict]:
    return [m for m in ws.sent if m.get("type") == "transcription" and m["is_final"] is final]


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    audio, _ = sample("order_en")
    return audio


async def test_end_audio_flushes_open_utterance_with_flag(scheduler, speech):
    ws = FakeSocket()
    ws.text(v1_metadata(partials=False))
    cut = int(2.5 * 16000)  # mid-sentence: the VAD has not ended this utterance
    for frame in frames_of(speech[:cut]):
        ws.binary(frame)
    ws.text({"type": "end_audio"})
    ws.binary(b"\x00" * 1024)  # audio after end_audio is ignored
    await asyncio.wait_for(session(ws, scheduler).run(), 10)
    kinds = [m["type"] if m["type"] != "end_audio" else m["body"]["status"] for m in ws.sent]
    assert kinds == ["acknowledged", "transcription", "finished"]
    [final] = transcripts(ws, True)
    assert final["is_end_of_audio_flush"] is True and final["transcription_num"] == 0
    assert ws.closed[0] == 1000


async def test_end_audio_without_speech(scheduler):
    ws = FakeSocket()
    ws.text(v1_metadata())
    for frame in frames_of(np.zeros(16000, np.int16)):
        ws.binary(frame)
    ws.text({"type": "end_audio"})
    await asyncio.wait_for(session(ws, scheduler).run(), 10)
    assert ws.sent == [
        {"type": "end_audio", "body": {"status": "acknowledged"}},
        {"type": "end_audio", "body": {"status": "finished"}},
    ]


async def test_stale_partials_are_never_sent_after_their_final(scheduler, engine, speech):
    engine.partial_gate.clear()  # partials stall until the finals are out
    ws = FakeSocket()
    ws.text(v1_metadata(partials=True))
    for frame in frames_of(speech):
        ws.binary(frame)
    ws.text({"type": "end_audio"})
    run = asyncio.create_task(session(ws, scheduler).run())
    await asyncio.sleep(1.0)
    engine.partial_gate.set()
    await asyncio.wait_for(run, 10)
    finals = transcripts(ws, True)
    assert [f["transcription_num"] for f in finals] == [0, 1]
    for p in transcripts(ws, False):
        final_index = next(i for i, m in enumerate(ws.sent) if m is finals[p["transcription_num"]])
        assert ws.sent.index(p) < final_index


async def test_overloaded_replica_refuses_new_sessions(scheduler):
    ws = FakeSocket()
    s = session(ws, scheduler, limit=1)
    assert s.gate.try_enter()  # the one allowed session is open
    await s.run()
    assert ws.sent[0]["body"]["error_type"] == "overloaded"
    assert ws.closed[0] == 1013


async def test_metadata_timeout(scheduler):
    ws = FakeSocket()
    await session(ws, scheduler, first_frame_timeout_s=0.05).run()
    assert ws.sent[0]["body"]["error_type"] == "metadata_timeout" and ws.closed[0] == 1008


async def test_disconnect_drops_queued_work(scheduler, engine, speech):
    engine.partial_gate.clear()
    ws = FakeSocket()
    ws.text(v1_metadata(partials=True))
    for frame in frames_of(speech[: 3 * 16000]):
        ws.binary(frame)
    run = asyncio.create_task(session(ws, scheduler).run())
    await asyncio.sleep(0.5)
    ws.disconnect()
    await asyncio.wait_for(run, 5)
    assert scheduler.whisper.queue_depth == 0
    engine.partial_gate.set()
    assert ws.closed is None  # a gone client gets no close frame


async def test_client_faster_than_the_server_is_told_to_back_off(scheduler, monkeypatch):
    gate = threading.Event()
    real = scheduler.vad._run_batch
    monkeypatch.setattr(scheduler.vad, "_run_batch", lambda jobs: (gate.wait(5), real(jobs))[1])
    ws = FakeSocket()
    ws.text(v1_metadata())
    for frame in frames_of(np.zeros(5 * 16000, np.int16)):
        ws.binary(frame)
    await asyncio.wait_for(session(ws, scheduler, max_buffered_audio_s=2.0).run(), 5)
    gate.set()
    assert ws.sent[-1]["body"]["error_type"] == "overloaded" and ws.closed[0] == 1013


# -- every way a session ends releases its slot, gauge and scheduler state ----------------------
class HoldingEngine(FakeEngine):
    """Finals wait for ``final_gate``: a final stays pending while the test acts."""

    def __init__(self) -> None:
        super().__init__()
        self.final_gate = threading.Event()
        self.final_started = threading.Event()

    def run(self, jobs: list[TranscribeJob]) -> list[Transcript]:
        if jobs[0].kind is JobKind.FINAL:
            self.final_started.set()
            self.final_gate.wait(5)
        return super().run(jobs)


def _active() -> float:
    from whisper_streaming import metrics

    return metrics.ACTIVE_SESSIONS._value.get()  # noqa: SLF001


@pytest.mark.parametrize(
    "ending",
    ["disconnect", "bogus_control", "invalid_json", "binary_garbage_then_disconnect"],
)
async def test_session_ending_while_a_final_is_pending_releases_everything(speech, ending):
    """The leak: a client gone (or misbehaving) while its final was pending held its slot forever."""
    engine = HoldingEngine()
    sched = Scheduler(engine, SileroVad(), max_batch=8, vad_max_batch=8).start()
    try:
        ws = FakeSocket()
        gate = SessionGate(4)
        s = StreamingSession(ws, sched, WhisperSettings(), gate)
        before = _active()
        ws.text(v1_metadata(partials=False))
        for frame in frames_of(speech):
            ws.binary(frame)
        run = asyncio.create_task(s.run())
        assert await asyncio.to_thread(engine.final_started.wait, 5)  # a final is running
        await asyncio.sleep(0.5)  # the VAD has ended the utterance: the session awaits its final
        assert gate.active == 1 and _active() == before + 1
        if ending == "disconnect":
            ws.disconnect()
        elif ending == "bogus_control":
            ws.text({"type": "bogus"})
        elif ending == "invalid_json":
            ws.text("{not json")
        else:
            ws.binary(b"\x01" * 3)
            ws.disconnect()
        # asyncio.wait, not wait_for: a task that swallows its cancellation (the old leak) would
        # make wait_for hang instead of failing.
        await asyncio.wait({run}, timeout=1.0)
        assert run.done(), "the session never ended"
        assert gate.active == 0 and _active() == before
        assert sched.whisper.queue_depth == 0 and sched.vad.queue_depth == 0
        if ending in ("bogus_control", "invalid_json"):
            assert ws.sent[-1]["body"]["error_type"] == "invalid_message"
            assert ws.closed[0] == 1008
    finally:
        engine.final_gate.set()
        sched.stop()


async def test_deeply_nested_or_huge_metadata_is_a_typed_1008(scheduler):
    for payload in (
        "[" * 100_000 + "]" * 100_000,
        '{"vad_params": {"threshold": ' + "9" * 5000 + "}}",
    ):
        ws = FakeSocket()
        ws.text(payload)
        await asyncio.wait_for(session(ws, scheduler).run(), 5)
        assert ws.sent[-1]["body"]["error_type"] == "invalid_json"
        assert ws.closed[0] == 1008


async def test_admission_refuses_with_a_retry_hint(engine):
    from speech_common.admission import AdmissionPolicy

    sched = Scheduler(
        engine, SileroVad(), max_batch=8, vad_max_batch=8, admission=AdmissionPolicy(1)
    ).start()
    try:
        gate = SessionGate(4)
        assert gate.try_enter()  # one session open: the prior capacity of 1 is used
        ws = FakeSocket()
        await asyncio.wait_for(StreamingSession(ws, sched, WhisperSettings(), gate).run(), 2)
        body = ws.sent[0]["body"]
        assert body["error_type"] == "overloaded" and body["retry_after_s"] > 0
        assert ws.closed[0] == 1013 and gate.active == 1
    finally:
        sched.stop()


async def test_a_whisper_worker_busy_with_partials_refuses_no_one(engine):
    """Partials fill the worker's idle time: busy as it is, a session is refused only when a
    final or an audio window lags (issue 20: 4 real-time streams were refused at 100 % busy)."""
    from speech_common.admission import AdmissionPolicy

    sched = Scheduler(
        engine, SileroVad(), max_batch=8, vad_max_batch=8,
        admission=AdmissionPolicy(capacity_sessions=8, max_queue_wait_s=0.5),
    )  # fmt: skip
    sched.whisper.utilisation = lambda window_s: 1.0  # type: ignore[method-assign]
    assert sched.admission_error(active=3) is None
    sched.vad.oldest_wait_s = lambda priority=None: 0.8  # type: ignore[method-assign]
    refusal = sched.admission_error(active=3)
    assert refusal is not None and "0.8 s behind" in refusal.message
    sched.vad.oldest_wait_s = lambda priority=None: 0.0  # type: ignore[method-assign]
    assert sched.admission_error(active=8) is not None  # the measured capacity still bounds
