"""Streaming voice activity detection.

``VadSegmenter`` is sans-I/O: it takes 512-sample windows at 16 kHz with their speech probability
and says where utterances start and end. ``SileroVad`` computes those probabilities with Silero's
ONNX model, one shared inference session for all streams, batched across streams.

The model is bundled (``assets/silero_vad.onnx``, MIT, see ``assets/SILERO_VAD_LICENSE``): the
silero-vad package that ships it requires torch, which the STT image must not carry.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .audio import WHISPER_RATE_HZ, SampleBuffer
from .onnx_session import cpu_session

logger = logging.getLogger(__name__)

SAMPLE_RATE_HZ = WHISPER_RATE_HZ
WINDOW_SAMPLES = 512  # Silero's window at 16 kHz (32 ms)
CONTEXT_SAMPLES = 64  # Silero v5+ prepends the previous window's last 64 samples
STATE_SHAPE = (2, 1, 128)
NEG_THRESHOLD_OFFSET = 0.15  # Silero's hysteresis: speech ends below threshold - 0.15
FORCED_CUT_SEARCH_S = 5.0  # where to look for the quietest point when an utterance is too long
# A stream's Silero state starts as after this much digital silence, not from zeros: from a cold
# state Silero scored the first 250 ms of speech at a stream's start 0.07-0.26 ("Printing" lost
# its word); after 16 silent windows it fires within 2-3 windows, like mid-stream.
PRIME_SILENCE_WINDOWS = 16
# Silero VAD v6 exactly as silero-vad 6.2.3 ships it (silero_vad/data/silero_vad.onnx).
SILERO_ONNX_PATH = Path(__file__).resolve().parent / "assets" / "silero_vad.onnx"
SILERO_ONNX_SHA256 = "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"


@dataclass(frozen=True)
class VadOptions:
    threshold: float = 0.5
    min_silence_duration_ms: int = 300
    speech_pad_ms: int = 30
    min_speech_duration_ms: int = 250  # shorter bursts (clicks, breaths) are not transcribed
    max_utterance_s: float = 30.0  # Whisper's window: force a cut before this
    # Audio kept before the onset (at least speech_pad_ms): Silero fires a little after a soft
    # onset ("ask" lost its "a" with the client's 30 ms pad); the audio is there anyway. (With
    # tiny.en, 300 ms measured worse on both sample sets: see config.yaml.)
    preroll_ms: int = 0
    # Audio kept after the last speech window (at least speech_pad_ms). Silero scores a word's
    # soft ending (the "-ns" of "Americans") as silence; with the client's 30 ms pad Whisper
    # heard "america" / "as not". It is audio the final waited for anyway (the silence timeout),
    # so it costs no latency up to min_silence_duration_ms.
    postroll_ms: int = 0
    # A stream's first utterance whose onset comes within this much of the stream's start
    # begins at the stream's start. Silero fires late on a soft onset ("Printing" of
    # LJ001-0009: 256 ms into the word) and a stream that opens with speech has no pause
    # before it whose noise pre-roll could add (mid-stream, pre-roll cost more words than it
    # won: docs/benchmarks.md).
    stream_head_ms: int = 0
    # An onset that follows at least pause_preroll_after_ms without speech (a new turn, mid-
    # stream) gets up to pause_preroll_ms of the pause before it: the stream head's rule after
    # every long pause. Never audio the previous utterance kept; a short pause (a comma) gets
    # only preroll_ms, as its audio may still hold the previous word's ending.
    pause_preroll_ms: int = 0
    pause_preroll_after_ms: int = 500

    @property
    def neg_threshold(self) -> float:
        return max(self.threshold - NEG_THRESHOLD_OFFSET, 0.01)


@dataclass(frozen=True)
class SpeechStarted:
    start_s: float


@dataclass(frozen=True)
class SpeechEnded:
    """One utterance: its audio (padded) and where it lies in the stream."""

    audio: np.ndarray
    start_s: float
    end_s: float
    forced: bool  # cut at max_utterance_s, speech goes on
    too_short: bool = False  # under min_speech_duration_ms: do not transcribe
    speech_end_s: float | None = None  # where its last speech window ends (None: end_s)


VadEvent = SpeechStarted | SpeechEnded


class VadSegmenter:
    """Per-stream utterance segmentation from per-window speech probabilities (sans-I/O)."""

    def __init__(self, options: VadOptions) -> None:
        self.options = options
        self._pad = int(options.speech_pad_ms * SAMPLE_RATE_HZ / 1000)
        self._preroll_samples = max(self._pad, int(options.preroll_ms * SAMPLE_RATE_HZ / 1000))
        self._head = int(options.stream_head_ms * SAMPLE_RATE_HZ / 1000)
        self._trail = max(self._pad, int(options.postroll_ms * SAMPLE_RATE_HZ / 1000))
        self._pause_preroll = int(options.pause_preroll_ms * SAMPLE_RATE_HZ / 1000)
        self._pause_after = int(options.pause_preroll_after_ms * SAMPLE_RATE_HZ / 1000)
        self._min_silence = int(options.min_silence_duration_ms * SAMPLE_RATE_HZ / 1000)
        self._min_speech = int(options.min_speech_duration_ms * SAMPLE_RATE_HZ / 1000)
        self._max_samples = int(options.max_utterance_s * SAMPLE_RATE_HZ)
        self._preroll: deque[np.ndarray] = deque()
        self._preroll_len = 0
        self._utterance = SampleBuffer(self._max_samples + WINDOW_SAMPLES)
        self._probs: list[float] = []  # one per window of the current utterance
        self._in_speech = False
        self._utt_start = 0  # stream sample index of the utterance's first sample
        self._speech_start = 0  # stream sample index of its first speech window (after preroll)
        self._last_speech_end = 0  # stream sample index just after the last speech window
        self._previous_speech_end = 0  # ... of the previous utterance (0: none yet)
        self._silence = 0  # samples of silence since the last speech window
        self._position = 0  # stream samples seen
        self._heard = False  # an utterance has started in this stream

    @property
    def in_speech(self) -> bool:
        return self._in_speech

    @property
    def position_s(self) -> float:
        return self._position / SAMPLE_RATE_HZ

    @property
    def silence_ms(self) -> float:
        """Silence since the last speech window of the open utterance."""
        return self._silence * 1000 / SAMPLE_RATE_HZ if self._in_speech else 0.0

    @property
    def trailing_ms(self) -> float:
        """Audio a final keeps after its last speech window: the pad or the post-roll."""
        return self._trail * 1000 / SAMPLE_RATE_HZ

    def ending_audio(self) -> np.ndarray | None:
        """If speech stopped for at least the trailing audio, the audio the final will hold
        should it stay stopped (a copy), else None. Lets a caller start the final before the
        silence timeout."""
        if not self._in_speech or self._position - self._last_speech_end < self._trail:
            return None
        if self._last_speech_end <= self._utt_start:  # forced cut in a pause: no speech here yet
            return None
        return self._utterance.view()[
            : self._last_speech_end + self._trail - self._utt_start
        ].copy()

    @property
    def last_speech_end_s(self) -> float:
        """Where the last speech window ended (stream seconds)."""
        return self._last_speech_end / SAMPLE_RATE_HZ

    @property
    def speech_ms(self) -> float:
        """Speech in the open utterance so far, first to last speech window (pads excluded)."""
        if not self._in_speech:
            return 0.0
        return max(self._last_speech_end - self._speech_start, 0) * 1000 / SAMPLE_RATE_HZ

    @property
    def utterance_start_s(self) -> float:
        return self._utt_start / SAMPLE_RATE_HZ

    def utterance_audio(self) -> np.ndarray:
        """The current utterance so far (a view; copy before handing it to another thread)."""
        return self._utterance.view()

    def push(self, window: np.ndarray, prob: float) -> list[VadEvent]:
        """Feed one 512-sample window and its speech probability."""
        events: list[VadEvent] = []
        start = self._position
        self._position += len(window)
        if not self._in_speech:
            if prob >= self.options.threshold:
                self._start_utterance(start, window, prob)
                events.append(SpeechStarted(self._utt_start / SAMPLE_RATE_HZ))
            else:
                self._remember_preroll(window)
            return events

        self._utterance.append(window)
        self._probs.append(prob)
        # Silero's hysteresis: a pause starts below neg_threshold and only speech at or above
        # threshold ends it; in between, an ongoing pause goes on and ongoing speech goes on.
        if prob >= self.options.threshold or (
            prob >= self.options.neg_threshold and not self._silence
        ):
            self._silence = 0
            self._last_speech_end = self._position
        else:
            self._silence += len(window)
        if self._silence >= self._min_silence:
            events.append(self._end_utterance())
        elif len(self._utterance) >= self._max_samples:
            events.extend(self._force_cut())
        return events

    def flush(self) -> list[VadEvent]:
        """End of stream: close the open utterance, if any."""
        return [self._end_utterance()] if self._in_speech else []

    # -- internals -----------------------------------------------------------------------------
    def _preroll_limit(self, onset: int) -> int:
        """Samples of pre-roll an onset at stream sample ``onset`` gets (see stream_head_ms)."""
        if not self._heard and onset <= self._head:
            return max(self._preroll_samples, onset)
        if self._pause_preroll and onset - self._previous_speech_end >= self._pause_after:
            return max(self._preroll_samples, self._pause_preroll)
        return self._preroll_samples

    def _remember_preroll(self, window: np.ndarray) -> None:
        self._preroll.append(window)
        self._preroll_len += len(window)
        # Keep what the next onset could take: the pause rule may apply by then.
        limit = max(self._preroll_limit(self._position), self._pause_preroll)
        while self._preroll and self._preroll_len - len(self._preroll[0]) >= limit:
            self._preroll_len -= len(self._preroll.popleft())

    def _start_utterance(self, start: int, window: np.ndarray, prob: float) -> None:
        pre = np.concatenate(list(self._preroll)) if self._preroll else np.zeros(0, np.float32)
        pre = pre[len(pre) - min(self._preroll_limit(start), len(pre)) :]
        self._heard = True
        self._preroll.clear()
        self._preroll_len = 0
        self._utterance.clear()
        self._utterance.append(pre)
        self._utterance.append(window)
        self._probs = [prob]
        self._in_speech = True
        self._utt_start = start - len(pre)
        self._speech_start = start
        self._last_speech_end = start + len(window)
        self._silence = 0

    def _end_utterance(self) -> SpeechEnded:
        # A forced cut inside a pause can leave the last speech before this utterance's start.
        keep_until = max(min(self._last_speech_end + self._trail, self._position), self._utt_start)
        length = keep_until - self._utt_start
        audio = self._utterance.consume(length)
        # Measured from the first speech window: the preroll may be shorter than the pad (stream
        # start, forced cut), so subtracting the pad would call real speech too short.
        speech_samples = self._last_speech_end - self._speech_start
        event = SpeechEnded(
            audio=audio,
            start_s=self._utt_start / SAMPLE_RATE_HZ,
            end_s=keep_until / SAMPLE_RATE_HZ,
            forced=False,
            speech_end_s=self._last_speech_end / SAMPLE_RATE_HZ,
            too_short=speech_samples < self._min_speech,
        )
        # The silence after the trailing audio becomes preroll for the next utterance.
        self._previous_speech_end = self._last_speech_end
        tail = self._utterance.consume(len(self._utterance))
        self._preroll.clear()
        self._preroll_len = 0
        keep = max(self._preroll_samples, self._pause_preroll)
        if keep and len(tail):
            self._remember_preroll(tail[-keep:])
        self._utterance.clear()
        self._probs = []
        self._in_speech = False
        return event

    def _force_cut(self) -> list[VadEvent]:
        """Cut a too-long utterance at its least speech-like window of the last few seconds."""
        # Search at most the later half: with a short max_utterance_s a cut near the start would
        # leave a remainder that hits the cap again at once (a stream of one-window finals).
        search_s = min(FORCED_CUT_SEARCH_S, self.options.max_utterance_s / 2)
        search = int(search_s * SAMPLE_RATE_HZ / WINDOW_SAMPLES)
        first = max(len(self._probs) - search, 1)
        candidates = self._probs[first:]
        cut_window = first + int(np.argmin(candidates)) if candidates else len(self._probs)
        offset = len(self._utterance) - len(self._probs) * WINDOW_SAMPLES  # preroll length
        cut = offset + cut_window * WINDOW_SAMPLES
        audio = self._utterance.consume(cut)
        event = SpeechEnded(
            audio=audio,
            start_s=self._utt_start / SAMPLE_RATE_HZ,
            end_s=(self._utt_start + cut) / SAMPLE_RATE_HZ,
            forced=True,
        )
        self._utt_start += cut
        self._speech_start = self._utt_start
        self._probs = self._probs[cut_window:]
        return [event, SpeechStarted(self._utt_start / SAMPLE_RATE_HZ)]


@dataclass
class VadStreamState:
    """Silero's recurrent state and context for one stream."""

    state: np.ndarray
    context: np.ndarray
    primed: bool = True  # False: SileroVad replaces it with its after-silence state first

    @classmethod
    def fresh(cls) -> VadStreamState:
        """Silero's reset state (zeros), as its own wrapper starts."""
        return cls(np.zeros(STATE_SHAPE, np.float32), np.zeros(CONTEXT_SAMPLES, np.float32))

    @classmethod
    def after_silence(cls) -> VadStreamState:
        """A new stream: the model's state after PRIME_SILENCE_WINDOWS of silence, filled in by
        ``SileroVad`` at the stream's first windows (the core holds no model)."""
        state = cls.fresh()
        state.primed = False
        return state


VadJob = tuple[VadStreamState, np.ndarray]  # a stream's state and its next windows[k, 512]


@dataclass(frozen=True)
class VadResult:
    probabilities: np.ndarray  # one per window
    state: VadStreamState  # the stream's state after them


class SileroVad:
    """Silero VAD (the bundled ONNX model); one session shared by all streams."""

    def __init__(self, onnx_path: str | Path = SILERO_ONNX_PATH, threads: int = 1) -> None:
        self._session = cpu_session(onnx_path, threads)
        self._sr = np.array(SAMPLE_RATE_HZ, dtype=np.int64)
        silence = VadStreamState.fresh()
        self.probabilities(
            [(silence, np.zeros((PRIME_SILENCE_WINDOWS, WINDOW_SAMPLES), np.float32))]
        )
        self._after_silence = silence

    def step(self, jobs: list[VadJob]) -> list[VadResult]:
        """The worker's call: each job's probabilities and its stream's state after them. A
        job's state is the caller's no more once submitted (the worker thread advances it); it
        comes back in the result, so no thread touches state a session still holds."""
        probs = self.probabilities(jobs)
        return [VadResult(p, state) for p, (state, _) in zip(probs, jobs, strict=True)]

    def probabilities(self, streams: list[VadJob]) -> list[np.ndarray]:
        """For each (state, windows[k, 512]) return k probabilities, advancing each state; runs
        streams in lockstep."""
        for vs, _ in streams:
            if not vs.primed:
                vs.state = self._after_silence.state.copy()
                vs.context = self._after_silence.context.copy()
                vs.primed = True
        results = [np.zeros(len(w), np.float32) for _, w in streams]
        steps = max((len(w) for _, w in streams), default=0)
        for step in range(steps):
            active = [i for i, (_, w) in enumerate(streams) if step < len(w)]
            x = np.stack(
                [np.concatenate([streams[i][0].context, streams[i][1][step]]) for i in active]
            )
            state = np.concatenate([streams[i][0].state for i in active], axis=1)
            out, new_state = self._session.run(None, {"input": x, "state": state, "sr": self._sr})
            for row, i in enumerate(active):
                vs = streams[i][0]
                vs.state = new_state[:, row : row + 1, :]
                vs.context = x[row, -CONTEXT_SAMPLES:]
                results[i][step] = out[row, 0]
        return results
