"""One WebSocket session of streaming transcription: the async shell around the sans-I/O core.

Tasks per session: receive (frames -> audio queue; control messages answered at once), process
(decode, resample, VAD, utterance tracking, job submission), collect (finals in order), send
(one writer). Any task failing or the client leaving cancels the others; cleanup in ``finally``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.websockets import WebSocketDisconnect

from speech_common.audio import AudioInput, Encoding
from speech_common.batching import Superseded
from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, VadOptions, VadStreamState
from speech_common.ws import CloseCode, ProtocolError, SessionGate, safe_close, send_error_and_close

from . import metrics
from .engine import DecodeOptions, JobKind, TranscribeJob, Transcript
from .scheduler import Scheduler
from .schema import (
    ControlMessage,
    SegmentOut,
    SessionConfig,
    TranscriptionMessage,
    WordTimestamp,
    end_audio_message,
    health_message,
    parse_metadata,
)
from .settings import WhisperSettings
from .utterance import (
    Dropped,
    FinalRequest,
    PartialRequest,
    SpeculationVoid,
    SpeculativeFinal,
    TrackerOptions,
    UtteranceTracker,
)

logger = logging.getLogger(__name__)

_END = object()  # end_audio marker in the audio queue


@dataclass
class _PendingFinal:
    num: int
    future: asyncio.Future | None  # None: the end_audio "finished" marker
    audio_s: float
    speech_end_arrival: float  # loop time the last speech audio arrived
    flush: bool = False


class StreamingSession:
    def __init__(
        self, websocket: Any, scheduler: Scheduler, settings: WhisperSettings, gate: SessionGate
    ) -> None:
        self.ws = websocket
        self.scheduler = scheduler
        self.settings = settings
        self.gate = gate
        self.id = uuid.uuid4().hex[:12]
        self._outbox: asyncio.Queue[dict] = asyncio.Queue()
        self._audio: asyncio.Queue[Any] = asyncio.Queue()
        self._queued_samples = 0
        self._pending: deque[_PendingFinal] = deque()
        self._pending_changed = asyncio.Event()
        self._last_partial_sent: dict[int, int] = {}  # num -> sequence of the newest partial sent
        self._partial_seq = 0
        self._finalised: set[int] = set()
        self._spec: tuple[int, int, asyncio.Future] | None = None  # (num, samples, future)
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=4096)  # (end sample, loop time)
        self._ended = False
        self._pad_samples = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def run(self) -> None:
        if not self.gate.try_enter():
            await send_error_and_close(
                self.ws,
                ProtocolError(
                    "overloaded", "too many sessions; retry later", CloseCode.TRY_AGAIN_LATER
                ),
            )
            return
        metrics.ACTIVE_SESSIONS.inc()
        try:
            config = await self._handshake()
            await self._serve(config)
        except ProtocolError as exc:
            metrics.SESSION_ERRORS.labels(exc.error_type).inc()
            logger.info("session %s: %s (%s)", self.id, exc.error_type, exc.message)
            await send_error_and_close(self.ws, exc)
        except WebSocketDisconnect:
            logger.info("session %s: client disconnected", self.id)
        except Exception:
            logger.exception("session %s: internal error", self.id)
            metrics.SESSION_ERRORS.labels("internal_error").inc()
            await send_error_and_close(
                self.ws,
                ProtocolError("internal_error", "internal server error", CloseCode.INTERNAL_ERROR),
            )
        finally:
            self.scheduler.forget(self.id)
            self.gate.leave()
            metrics.ACTIVE_SESSIONS.dec()

    async def _receive(self) -> dict:
        message = await self.ws.receive()
        if message["type"] == "websocket.disconnect":
            raise WebSocketDisconnect(message.get("code", 1000))
        return message

    async def _handshake(self) -> SessionConfig:
        try:
            message = await asyncio.wait_for(self._receive(), self.settings.metadata_timeout_s)
        except TimeoutError:
            raise ProtocolError("metadata_timeout", "no metadata frame received") from None
        if message.get("text") is None:
            raise ProtocolError(
                "audio_before_metadata", "the first frame must be the JSON metadata, not audio"
            )
        try:
            raw = json.loads(message["text"])
        except json.JSONDecodeError as exc:
            raise ProtocolError("invalid_json", f"metadata is not valid JSON: {exc.msg}") from None
        try:
            config = parse_metadata(raw)
        except ValueError as exc:
            raise ProtocolError("invalid_metadata", str(exc)) from None
        if config.streaming.encoding not in {e.value for e in Encoding}:
            raise ProtocolError(
                "unsupported_encoding",
                f"encoding {config.streaming.encoding!r} is not supported; use one of "
                f"{sorted(e.value for e in Encoding)}",
                CloseCode.UNSUPPORTED_DATA,
            )
        lang = config.whisper.audio_language
        supported = self.scheduler.engine.supported_languages
        for code in ([lang] if lang != "auto" else []) + list(config.whisper.language_options):
            if code not in supported:
                raise ProtocolError(
                    "unsupported_language",
                    f"language {code!r} is not supported by this model",
                    CloseCode.UNSUPPORTED_DATA,
                )
        logger.info("session %s: %s metadata %s", self.id, config.shape, config.streaming)
        return config

    async def _serve(self, config: SessionConfig) -> None:
        tasks: list[asyncio.Task] = [
            asyncio.create_task(self._receive_loop(config), name=f"{self.id}-receive"),
            asyncio.create_task(self._process_loop(config), name=f"{self.id}-process"),
            asyncio.create_task(self._collect_finals(config), name=f"{self.id}-collect"),
            asyncio.create_task(self._send_loop(), name=f"{self.id}-send"),
        ]
        all_tasks = list(tasks)
        collector = tasks[2]
        try:
            # Ends when the collector has sent "finished" (end_audio) or any task fails
            # (a disconnect surfaces as WebSocketDisconnect from the receiver).
            while True:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task.exception() is not None:
                        raise task.exception()
                if collector in done:
                    return
                tasks = [t for t in tasks if t not in done]
        finally:
            for task in all_tasks:
                task.cancel()
            await asyncio.gather(*all_tasks, return_exceptions=True)
            self._cancel_outstanding()

    def _cancel_outstanding(self) -> None:
        for item in self._pending:
            if item.future is not None:
                item.future.cancel()
        if self._spec is not None:
            self._spec[2].cancel()

    # -- receive: frames in, control answered at once ------------------------------------------
    async def _receive_loop(self, config: SessionConfig) -> None:
        rate = config.streaming.sample_rate
        bytes_per_sample = 2 if config.streaming.encoding == Encoding.PCM_S16LE.value else 1
        limit = self.settings.max_buffered_audio_s * SAMPLE_RATE_HZ
        while True:
            message = await self._receive()
            data = message.get("bytes")
            if data is not None:
                if self._ended:
                    continue  # audio after end_audio is ignored
                self._queued_samples += int(len(data) / bytes_per_sample * SAMPLE_RATE_HZ / rate)
                if self._queued_samples > limit:
                    raise ProtocolError(
                        "overloaded",
                        "server cannot keep up with the audio",
                        CloseCode.TRY_AGAIN_LATER,
                    )
                self._audio.put_nowait(data)
                continue
            control = self._parse_control(message.get("text") or "")
            if control.type == "health_check":
                self._outbox.put_nowait(health_message(True))
            elif control.type == "end_audio" and not self._ended:
                self._ended = True
                self._outbox.put_nowait(end_audio_message("acknowledged"))
                self._audio.put_nowait(_END)

    @staticmethod
    def _parse_control(text: str) -> ControlMessage:
        try:
            return ControlMessage.model_validate_json(text)
        except ValueError:
            raise ProtocolError(
                "invalid_message",
                'text frames after the metadata must be {"type": "end_audio"} or '
                '{"type": "health_check"}',
            ) from None

    # -- process: audio -> VAD -> transcription jobs -------------------------------------------
    async def _process_loop(self, config: SessionConfig) -> None:
        s = config.streaming
        audio_in = AudioInput(Encoding(s.encoding), s.sample_rate, SAMPLE_RATE_HZ)
        vad_options = VadOptions(
            threshold=config.vad.threshold,
            min_silence_duration_ms=config.vad.min_silence_duration_ms,
            speech_pad_ms=config.vad.speech_pad_ms,
            max_utterance_s=s.final_transcript_max_duration_s,
        )
        speculate = None
        if self.settings.speculative_finals:
            speculate = max(
                config.vad.speech_pad_ms,
                config.vad.min_silence_duration_ms - self.settings.speculation_lead_ms,
            )
        tracker = UtteranceTracker(
            TrackerOptions(
                vad_options,
                s.enable_partial_transcripts,
                s.partial_transcript_interval_s,
                speculate,
            )
        )
        decode = self._decode_options(config)
        self._pad_samples = int(config.vad.speech_pad_ms * SAMPLE_RATE_HZ / 1000)
        vad_state = VadStreamState.fresh()
        pending = np.zeros(0, np.float32)
        received = 0  # 16 kHz samples received
        while True:
            item = await self._audio.get()
            final = item is _END
            samples = audio_in.flush() if final else audio_in.feed(item)
            if not final:
                self._queued_samples -= int(len(samples))
            received += len(samples)
            self._arrivals.append((received, asyncio.get_running_loop().time()))
            metrics.AUDIO_SECONDS.inc(len(samples) / SAMPLE_RATE_HZ)
            pending = np.concatenate([pending, samples]) if len(pending) else samples
            if final and len(pending) % WINDOW_SAMPLES:
                pad = WINDOW_SAMPLES - len(pending) % WINDOW_SAMPLES
                pending = np.concatenate([pending, np.zeros(pad, np.float32)])
            n = len(pending) // WINDOW_SAMPLES
            if n:
                windows = pending[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)
                pending = pending[n * WINDOW_SAMPLES :].copy()
                probs = await self.scheduler.vad.submit((vad_state, windows), stream_id=self.id)
                for window, prob in zip(windows, probs, strict=True):
                    for request in tracker.push(window, float(prob)):
                        self._dispatch(request, decode)
            if final:
                for request in tracker.flush():
                    self._dispatch(request, decode)
                if self._pending:
                    self._pending[-1].flush = True
                self._pending.append(_PendingFinal(-1, None, 0.0, 0.0))
                self._pending_changed.set()
                return

    @staticmethod
    def _decode_options(config: SessionConfig) -> DecodeOptions:
        w = config.whisper
        return DecodeOptions(
            language=None if w.audio_language == "auto" else w.audio_language,
            prompt=w.prompt,
            word_timestamps=w.show_word_timestamps,
            beam_size=w.beam_width,
            length_penalty=w.length_penalty,
            repetition_penalty=w.repetition_penalty,
            no_repeat_ngram_size=w.no_repeat_ngram_size,
            language_options=tuple(w.language_options),
            language_detection_only=w.language_detection_only,
        )

    def _dispatch(self, request: Any, decode: DecodeOptions) -> None:
        submit = self.scheduler.whisper.submit
        if isinstance(request, PartialRequest):
            job = TranscribeJob(JobKind.PARTIAL, request.audio, decode, request.offset_s)
            self._partial_seq += 1
            seq = self._partial_seq
            fut = submit(job, stream_id=self.id, priority=JobKind.PARTIAL, replace_key="partial")
            fut.add_done_callback(
                functools.partial(
                    self._on_partial, num=request.num, seq=seq, samples=len(request.audio)
                )
            )
        elif isinstance(request, SpeculativeFinal):
            if self._spec is not None:
                self._spec[2].cancel()
            job = TranscribeJob(JobKind.FINAL, request.audio, decode, request.offset_s)
            fut = submit(job, stream_id=self.id, priority=JobKind.FINAL)
            fut.add_done_callback(_consume_exception)
            self._spec = (request.num, len(request.audio), fut)
        elif isinstance(request, FinalRequest):
            fut = None
            if self._spec is not None:
                num, length, spec_fut = self._spec
                self._spec = None
                if num == request.num and length == len(request.audio) and not spec_fut.cancelled():
                    fut = spec_fut  # the pause lasted: the speculative final is the final
                else:
                    spec_fut.cancel()
            if fut is None:
                job = TranscribeJob(JobKind.FINAL, request.audio, decode, request.offset_s)
                fut = submit(job, stream_id=self.id, priority=JobKind.FINAL)
            self._finalised.add(request.num)
            speech_end = (
                round(request.offset_s * SAMPLE_RATE_HZ) + len(request.audio) - self._pad_samples
            )
            self._pending.append(
                _PendingFinal(
                    request.num,
                    fut,
                    len(request.audio) / SAMPLE_RATE_HZ,
                    self._arrival_of(speech_end),
                )
            )
            self._pending_changed.set()
        elif isinstance(request, (Dropped, SpeculationVoid)):
            if self._spec is not None and self._spec[0] == request.num:
                self._spec[2].cancel()
                self._spec = None

    def _arrival_of(self, sample: int) -> float:
        for end, at in self._arrivals:
            if end >= sample:
                return at
        return asyncio.get_running_loop().time()

    def _on_partial(self, fut: asyncio.Future, num: int, seq: int, samples: int) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            if not isinstance(exc, Superseded):
                logger.warning("session %s: partial failed: %s", self.id, exc)
            return
        if num in self._finalised or seq <= self._last_partial_sent.get(num, 0):
            return  # stale: the final (or a newer partial) got there first
        transcript: Transcript = fut.result()
        if not transcript.text:
            return  # nothing recognised yet (or only a dropped hallucination)
        self._last_partial_sent[num] = seq
        self._outbox.put_nowait(self._message(transcript, num, False, samples / SAMPLE_RATE_HZ))
        metrics.PARTIALS_SENT.inc()

    # -- collect finals in order, then send ------------------------------------------------------
    async def _collect_finals(self, config: SessionConfig) -> None:
        while True:
            while not self._pending:
                self._pending_changed.clear()
                await self._pending_changed.wait()
            item = self._pending[0]
            if item.future is None:  # end_audio: everything before it was sent
                self._outbox.put_nowait(end_audio_message("finished"))
                await self._outbox.join()
                await safe_close(self.ws, CloseCode.NORMAL, "end of audio")
                return
            try:
                transcript: Transcript = await item.future
            except asyncio.CancelledError:
                if item.future.cancelled():  # its job was dropped; the session is ending
                    self._pending.popleft()
                    continue
                raise
            self._pending.popleft()
            self._outbox.put_nowait(
                self._message(transcript, item.num, True, item.audio_s, flush=item.flush)
            )
            metrics.FINALS_SENT.inc()
            metrics.FINAL_LATENCY.observe(
                asyncio.get_running_loop().time() - item.speech_end_arrival
            )

    async def _send_loop(self) -> None:
        while True:
            message = await self._outbox.get()
            try:
                await self.ws.send_json(message)
            finally:
                self._outbox.task_done()

    def _message(
        self, transcript: Transcript, num: int, is_final: bool, audio_s: float, flush: bool = False
    ) -> dict:
        segments = [
            SegmentOut(
                text=seg.text,
                start_time=round(float(seg.start), 3),
                end_time=round(float(seg.end), 3),
                log_prob=None if seg.avg_logprob is None else float(seg.avg_logprob),
                word_timestamps=[
                    WordTimestamp(
                        word=w.word,
                        start_time=round(float(w.start), 3),
                        end_time=round(float(w.end), 3),
                        prob=float(w.prob),
                    )
                    for w in seg.words
                ]
                if seg.words
                else None,
            )
            for seg in transcript.segments
        ]
        return TranscriptionMessage(
            is_final=is_final,
            transcript=transcript.text,
            transcription_num=num,
            language_code=transcript.language,
            language_prob=transcript.language_prob,
            audio_length_sec=round(audio_s, 3),
            segments=segments,
            is_end_of_audio_flush=True if flush else None,
        ).to_json()


def _consume_exception(fut: asyncio.Future) -> None:
    if not fut.cancelled():
        fut.exception()
