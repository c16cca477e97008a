"""The streaming-Whisper session protocol as a sans-I/O state machine (no sockets, no clocks).

Frames, job results, timers and the client's disconnect go in; ``Send``, ``Submit`` (VAD and
Whisper jobs), ``Cancel`` and ``Close`` come out (``speech_common.driver`` runs it on a socket).
Every protocol fact lives here: the metadata handshake and its timeout, control messages,
partial/final ordering (finals in utterance order, never a partial after its final),
speculative finals, the ``end_audio`` flush handshake, the bound on audio waiting for the VAD.

Phases: METADATA -> STREAMING -> DRAINING (``end_audio`` received) -> DONE. A protocol error,
the end of the flush, or a disconnect ends it; ending cancels every job still outstanding.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import numpy as np

from speech_common.audio import AudioInput, Encoding
from speech_common.driver import Cancel, Close, Command, JobIds, Send, Submit
from speech_common.vad import SAMPLE_RATE_HZ, WINDOW_SAMPLES, VadOptions, VadStreamState
from speech_common.ws import CloseCode, ProtocolError, check_json_depth, load_json

from . import metrics
from .engine import DecodeOptions, JobKind, TranscribeJob, Transcript
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
from .utterance import (
    Dropped,
    FinalRequest,
    PartialRequest,
    Request,
    SpeculationVoid,
    SpeculativeFinal,
    TrackerOptions,
    UtteranceTracker,
)

logger = logging.getLogger(__name__)

VAD_WORKER = "vad"
WHISPER_WORKER = "whisper"
# Conditioning finals on the session's previous finals (``condition_on_previous_text``): the
# text kept is bounded (the engine then takes at most its last 64 tokens), and it is reset after
# a final that needed a hot fallback decode, as Whisper's ``prompt_reset_on_temperature``, so
# one bad final cannot start a loop that feeds itself.
CONTEXT_MAX_CHARS = 600
CONTEXT_RESET_TEMPERATURE = 0.5
ARRIVALS_KEPT = 4096  # (sample, time) pairs kept to time finals from the speech's arrival
# One audio frame: clients send 512 samples (1 KiB); 1 MiB is ~33 s of 16 kHz s16le.
MAX_AUDIO_FRAME_BYTES = 1 << 20


class Phase(Enum):
    METADATA = "metadata"
    STREAMING = "streaming"
    DRAINING = "draining"
    DONE = "done"


@dataclass(frozen=True)
class CoreLimits:
    first_frame_timeout_s: float = 30.0
    max_buffered_audio_s: float = 20.0  # audio received but not yet through the VAD
    speculative_finals: bool = True
    speculation_lead_ms: int = 150
    preroll_ms: int = 0  # audio given to Whisper before the VAD onset (at least the client's pad)
    postroll_ms: int = 0  # audio given to Whisper after the speech ends (at least the pad)
    stream_head_ms: int = 0  # a first onset this near the stream's start begins at the start
    whisper_beam_width: int = 1  # finals' beam when the session's metadata names none


@dataclass
class _Final:
    num: int
    job_id: int | None  # None: the end_audio "finished" marker
    audio_s: float
    speech_end_at: float  # when the last speech audio of the utterance arrived
    flush: bool = False
    result: Any = None
    ready: bool = False


class SttCore:
    def __init__(self, limits: CoreLimits, supported_languages: list[str]) -> None:
        self.limits = limits
        self.supported_languages = supported_languages
        self.phase = Phase.METADATA
        self.config: SessionConfig | None = None
        self._deadline: float | None = None
        self._ids = JobIds()
        self._outstanding: set[int] = set()  # every job submitted and not yet resolved
        # audio
        self._audio_in: AudioInput | None = None
        self._windows = np.zeros(0, np.float32)  # 16 kHz samples waiting for the VAD
        self._vad_state = VadStreamState.after_silence()
        self._vad_job: tuple[int, np.ndarray] | None = None  # (job id, its windows)
        self._received = 0  # 16 kHz samples received
        self._arrivals: deque[tuple[int, float]] = deque(maxlen=ARRIVALS_KEPT)
        # transcription
        self._tracker: UtteranceTracker | None = None
        self._decode: DecodeOptions | None = None
        self._partials: dict[int, tuple[int, int, int]] = {}  # job -> (num, seq, samples)
        self._partial_seq = 0
        self._last_partial_sent: dict[int, int] = {}  # num -> seq of the newest partial sent
        self._finalised: set[int] = set()
        self._spec: tuple[int, int, int] | None = None  # (num, samples, job id)
        self._spec_results: dict[int, Any] = {}  # speculative job -> result, before its final
        self._finals: deque[_Final] = deque()
        self._context = ""  # previous finals' text, for conditioning (bounded: CONTEXT_MAX_CHARS)
        self._flushed = False

    # -- the SessionCore interface -------------------------------------------------------------
    @property
    def done(self) -> bool:
        return self.phase is Phase.DONE

    @property
    def next_deadline(self) -> float | None:
        return self._deadline if self.phase is Phase.METADATA else None

    @property
    def outstanding_jobs(self) -> frozenset[int]:
        return frozenset(self._outstanding)

    def start(self, now: float) -> list[Command]:
        self._deadline = now + self.limits.first_frame_timeout_s
        return []

    def on_timer(self, now: float) -> list[Command]:
        if self.phase is Phase.METADATA and self._deadline is not None and now >= self._deadline:
            return self._fail(ProtocolError("metadata_timeout", "no metadata frame received"))
        return []

    def on_disconnect(self, now: float) -> list[Command]:
        if self.done:
            return []
        return self._end()

    def on_text(self, text: str, now: float) -> list[Command]:
        try:
            if self.phase is Phase.METADATA:
                return self._on_metadata(text)
            if self.phase in (Phase.STREAMING, Phase.DRAINING):
                return self._on_control(text, now)
        except ProtocolError as exc:
            return self._fail(exc)
        return []

    def on_bytes(self, data: bytes, now: float) -> list[Command]:
        if self.phase is Phase.METADATA:
            return self._fail(
                ProtocolError(
                    "audio_before_metadata", "the first frame must be the JSON metadata, not audio"
                )
            )
        if self.phase is not Phase.STREAMING:
            return []  # audio after end_audio is ignored
        if len(data) > MAX_AUDIO_FRAME_BYTES:
            return self._fail(
                ProtocolError(
                    "frame_too_large",
                    f"audio frames are limited to {MAX_AUDIO_FRAME_BYTES} bytes",
                    CloseCode.MESSAGE_TOO_BIG,
                )
            )
        samples = self._audio_in.feed(data)
        self._add_audio(samples, now)
        if len(self._windows) > self.limits.max_buffered_audio_s * SAMPLE_RATE_HZ:
            return self._fail(
                ProtocolError(
                    "overloaded", "server cannot keep up with the audio", CloseCode.TRY_AGAIN_LATER
                )
            )
        return self._submit_vad(now)

    def on_sent(self, ack: Any, now: float) -> list[Command]:
        return []  # nothing here waits for the client to have read a message

    def on_result(self, job_id: int, result: Any, now: float) -> list[Command]:
        if self.done or job_id not in self._outstanding:
            return []
        self._outstanding.discard(job_id)
        if self._vad_job is not None and job_id == self._vad_job[0]:
            return self._on_vad(result, now)
        if job_id in self._partials:
            return self._on_partial(job_id, result)
        return self._on_transcript(job_id, result, now)

    # -- handshake -------------------------------------------------------------------------------
    def _on_metadata(self, text: str) -> list[Command]:
        try:
            raw = load_json(text)
        except ValueError as exc:
            raise ProtocolError("invalid_json", f"metadata is not valid JSON: {exc}") from None
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
        for code in ([lang] if lang != "auto" else []) + list(config.whisper.language_options):
            if code not in self.supported_languages:
                raise ProtocolError(
                    "unsupported_language",
                    f"language {code!r} is not supported by this model",
                    CloseCode.UNSUPPORTED_DATA,
                )
        self._configure(config)
        return []

    def _configure(self, config: SessionConfig) -> None:
        s = config.streaming
        self.config = config
        self._audio_in = AudioInput(Encoding(s.encoding), s.sample_rate, SAMPLE_RATE_HZ)
        vad_options = VadOptions(
            threshold=config.vad.threshold,
            min_silence_duration_ms=config.vad.min_silence_duration_ms,
            speech_pad_ms=config.vad.speech_pad_ms,
            max_utterance_s=s.final_transcript_max_duration_s,
            preroll_ms=self.limits.preroll_ms,
            postroll_ms=self.limits.postroll_ms,
            stream_head_ms=self.limits.stream_head_ms,
        )
        speculate = None
        if self.limits.speculative_finals:
            # Not before the final's trailing audio is in: the speculation must hold what the
            # final will hold.
            speculate = max(
                config.vad.speech_pad_ms,
                self.limits.postroll_ms,
                config.vad.min_silence_duration_ms - self.limits.speculation_lead_ms,
            )
        self._tracker = UtteranceTracker(
            TrackerOptions(
                vad_options,
                s.enable_partial_transcripts,
                s.partial_transcript_interval_s,
                speculate,
            )
        )
        w = config.whisper
        self._decode = DecodeOptions(
            language=None if w.audio_language == "auto" else w.audio_language,
            prompt=w.prompt,
            word_timestamps=w.show_word_timestamps,
            beam_size=w.beam_width or self.limits.whisper_beam_width,
            length_penalty=w.length_penalty,
            repetition_penalty=w.repetition_penalty,
            no_repeat_ngram_size=w.no_repeat_ngram_size,
            language_options=tuple(w.language_options),
            language_detection_only=w.language_detection_only,
        )
        self.phase = Phase.STREAMING

    # -- control ---------------------------------------------------------------------------------
    def _on_control(self, text: str, now: float) -> list[Command]:
        try:
            check_json_depth(text)
            control = ControlMessage.model_validate_json(text)
        except ValueError:
            raise ProtocolError(
                "invalid_message",
                'text frames after the metadata must be {"type": "end_audio"} or '
                '{"type": "health_check"}',
            ) from None
        if control.type == "health_check":
            return [Send(health_message(True))]
        if self.phase is Phase.DRAINING:
            return []  # a second end_audio changes nothing
        self.phase = Phase.DRAINING
        tail = self._audio_in.flush()
        self._add_audio(tail, now)
        if len(self._windows) % WINDOW_SAMPLES:  # the last partial window, zero-padded
            pad = WINDOW_SAMPLES - len(self._windows) % WINDOW_SAMPLES
            self._windows = np.concatenate([self._windows, np.zeros(pad, np.float32)])
        return [Send(end_audio_message("acknowledged")), *self._submit_vad(now)]

    # -- audio -> VAD ----------------------------------------------------------------------------
    def _add_audio(self, samples: np.ndarray, now: float) -> None:
        self._received += len(samples)
        self._arrivals.append((self._received, now))
        metrics.AUDIO_SECONDS.inc(len(samples) / SAMPLE_RATE_HZ)
        if len(samples):
            self._windows = np.concatenate([self._windows, samples])

    def _submit_vad(self, now: float) -> list[Command]:
        """One VAD job in flight per session (its recurrent state travels with it)."""
        if self._vad_job is not None:
            return []
        n = len(self._windows) // WINDOW_SAMPLES
        if n == 0:
            return self._maybe_flush(now)
        windows = self._windows[: n * WINDOW_SAMPLES].reshape(n, WINDOW_SAMPLES)
        self._windows = self._windows[n * WINDOW_SAMPLES :].copy()
        job_id = self._ids.new()
        self._vad_job = (job_id, windows)
        self._outstanding.add(job_id)
        return [Submit(job_id, VAD_WORKER, (self._vad_state, windows))]

    def _on_vad(self, result: Any, now: float) -> list[Command]:
        _, windows = self._vad_job
        self._vad_job = None
        if isinstance(result, BaseException):
            logger.warning("VAD job failed: %r", result)
            return self._fail(
                ProtocolError(
                    "internal_error", "voice activity detection failed", CloseCode.INTERNAL_ERROR
                )
            )
        commands: list[Command] = []
        for window, prob in zip(windows, result, strict=True):
            for request in self._tracker.push(window, float(prob)):
                commands.extend(self._dispatch(request, now))
        return commands + self._submit_vad(now)

    def _maybe_flush(self, now: float) -> list[Command]:
        """After end_audio, once every window went through the VAD: close the open utterance."""
        if self.phase is not Phase.DRAINING or self._flushed or len(self._windows):
            return []
        self._flushed = True
        commands: list[Command] = []
        for request in self._tracker.flush():
            commands.extend(self._dispatch(request, now))
        if self._finals:
            self._finals[-1].flush = True
        self._finals.append(_Final(-1, None, 0.0, 0.0, ready=True))
        return commands + self._emit_finals(now)

    # -- transcription requests ------------------------------------------------------------------
    def _submit_transcribe(self, kind: JobKind, audio: np.ndarray, offset_s: float) -> Submit:
        job_id = self._ids.new()
        self._outstanding.add(job_id)
        options = self._decode
        if kind is JobKind.FINAL and self.config.whisper.condition_on_previous_text:
            options = replace(options, context=self._context)
        job = TranscribeJob(kind, audio, options, offset_s)
        replace_key = "partial" if kind is JobKind.PARTIAL else None
        return Submit(job_id, WHISPER_WORKER, job, priority=int(kind), replace_key=replace_key)

    def _cancel(self, job_id: int) -> Cancel:
        self._outstanding.discard(job_id)
        self._spec_results.pop(job_id, None)
        return Cancel(job_id)

    def _dispatch(self, request: Request, now: float) -> list[Command]:
        if isinstance(request, PartialRequest):
            submit = self._submit_transcribe(JobKind.PARTIAL, request.audio, request.offset_s)
            self._partial_seq += 1
            self._partials[submit.job_id] = (request.num, self._partial_seq, len(request.audio))
            return [submit]
        if isinstance(request, SpeculativeFinal):
            commands: list[Command] = []
            if self._spec is not None:
                commands.append(self._cancel(self._spec[2]))
            submit = self._submit_transcribe(JobKind.FINAL, request.audio, request.offset_s)
            self._spec = (request.num, len(request.audio), submit.job_id)
            return [*commands, submit]
        if isinstance(request, FinalRequest):
            return self._on_final_request(request, now)
        if isinstance(request, (Dropped, SpeculationVoid)):
            if self._spec is not None and self._spec[0] == request.num:
                job_id = self._spec[2]
                self._spec = None
                return [self._cancel(job_id)]
        return []

    def _on_final_request(self, request: FinalRequest, now: float) -> list[Command]:
        commands: list[Command] = []
        final = _Final(
            request.num,
            None,
            len(request.audio) / SAMPLE_RATE_HZ,
            self._arrival_of(round(request.speech_end_s * SAMPLE_RATE_HZ), now),
        )
        if self._spec is not None:
            num, length, job_id = self._spec
            self._spec = None
            if num == request.num and length == len(request.audio):
                final.job_id = job_id  # the pause lasted: the speculative final is the final
                if job_id in self._spec_results:
                    final.result, final.ready = self._spec_results.pop(job_id), True
            else:
                commands.append(self._cancel(job_id))
        if final.job_id is None:
            submit = self._submit_transcribe(JobKind.FINAL, request.audio, request.offset_s)
            final.job_id = submit.job_id
            commands.append(submit)
        self._finalised.add(request.num)
        self._finals.append(final)
        return commands + self._emit_finals(now)

    def _arrival_of(self, sample: int, now: float) -> float:
        for end, at in self._arrivals:
            if end >= sample:
                return at
        return now

    # -- results -----------------------------------------------------------------------------------
    def _on_partial(self, job_id: int, result: Any) -> list[Command]:
        num, seq, samples = self._partials.pop(job_id)
        if isinstance(result, BaseException):
            return []  # a failed, superseded or shed partial is dropped silently
        if num in self._finalised or seq <= self._last_partial_sent.get(num, 0):
            return []  # stale: the final (or a newer partial) got there first
        if not result.text:
            return []  # nothing recognised yet (or only a dropped hallucination)
        self._last_partial_sent[num] = seq
        metrics.PARTIALS_SENT.inc()
        return [Send(self._message(result, num, False, samples / SAMPLE_RATE_HZ))]

    def _on_transcript(self, job_id: int, result: Any, now: float) -> list[Command]:
        for final in self._finals:
            if final.job_id == job_id:
                final.result, final.ready = result, True
                return self._emit_finals(now)
        if self._spec is not None and self._spec[2] == job_id:
            self._spec_results[job_id] = result  # its FinalRequest may still come
        return []

    def _emit_finals(self, now: float) -> list[Command]:
        """Send finals in utterance order, as far as their results are in."""
        commands: list[Command] = []
        while self._finals and self._finals[0].ready:
            final = self._finals.popleft()
            if final.job_id is None:  # everything before end_audio went out
                commands.append(Send(end_audio_message("finished")))
                commands.extend(self._end(Close(CloseCode.NORMAL, "end of audio")))
                return commands
            if isinstance(final.result, BaseException):
                logger.warning("final %d failed: %r", final.num, final.result)
                commands.append(Send(_final_failed(final.num)))
                continue
            commands.append(
                Send(self._message(final.result, final.num, True, final.audio_s, final.flush))
            )
            self._remember(final.result)
            metrics.FINALS_SENT.inc()
            metrics.FINAL_LATENCY.observe(max(now - final.speech_end_at, 0.0))
        return commands

    def _remember(self, transcript: Transcript) -> None:
        if transcript.temperature > CONTEXT_RESET_TEMPERATURE:
            self._context = ""
        elif transcript.text:
            self._context = f"{self._context} {transcript.text}".strip()[-CONTEXT_MAX_CHARS:]

    # -- endings -----------------------------------------------------------------------------------
    def _fail(self, error: ProtocolError) -> list[Command]:
        metrics.SESSION_ERRORS.labels(error.error_type).inc()
        logger.info("session error %s (%s)", error.error_type, error.message)
        return self._end(Close(error.close_code, error.message, error))

    def _end(self, close: Close | None = None) -> list[Command]:
        """Cancel everything outstanding; the session is over."""
        commands: list[Command] = [Cancel(job_id) for job_id in sorted(self._outstanding)]
        self._outstanding.clear()
        self._spec_results.clear()
        self._vad_job = None
        self.phase = Phase.DONE
        return commands + ([close] if close is not None else [])

    # -- messages ----------------------------------------------------------------------------------
    @staticmethod
    def _message(
        transcript: Transcript, num: int, is_final: bool, audio_s: float, flush: bool = False
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


def _final_failed(num: int) -> dict[str, Any]:
    """A recoverable error: this utterance's final could not be computed; the session goes on."""
    return {
        "type": "error",
        "body": {
            "error_type": "final_failed",
            "message": f"transcription {num} failed; the session continues",
            "recoverable": True,
            "transcription_num": num,
        },
    }
