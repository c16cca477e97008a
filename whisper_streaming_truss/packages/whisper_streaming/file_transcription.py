"""Whole audio files on the streaming engine (the HTTP flavour, ``openai_api``).

A file of any container and codec FFmpeg reads (PyAV) is decoded block by block, its channels
averaged and resampled to 16 kHz (soxr, as the streams), cut by Silero VAD into utterances on the
scheduler's VAD worker, and neighbouring utterances are joined into chunks of up to
``MAX_CHUNK_S`` (Whisper's window less its padding): the silences between them are left out, so
a chunk is speech and the pads around it, and its times are mapped back to the file's
(``TimeMap``). Each chunk is a final on the scheduler's Whisper worker, batched with the chunks
of other requests (and the finals of any sessions: same priority, same batch key). At most
``window`` chunks of a request wait or run at once, so requests share the worker in turn and a
file of an hour holds a few chunks of audio in memory, never the whole file at 16 kHz.

Everything here runs on the event loop but the decoding (a pool of threads, one block ahead of
the VAD) and the models (the scheduler's threads).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import time
import zlib
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import soxr

from speech_common.vad import (
    SAMPLE_RATE_HZ,
    WINDOW_SAMPLES,
    SpeechEnded,
    VadOptions,
    VadSegmenter,
    VadStreamState,
)

from .engine import DecodeOptions, JobKind, TranscribeJob, Transcript
from .metrics import FILE_TRANSCRIPTIONS_ACTIVE
from .scheduler import Scheduler

logger = logging.getLogger(__name__)

# A chunk fills Whisper's 30 s window but for the second of padding the engine adds after it.
MAX_CHUNK_S = 29.0
# Utterances of a file: no latency to save, so a longer pause ends one (fewer cuts inside a
# sentence) and more audio around the speech goes with it (Silero calls a soft onset or ending
# silence). min_silence_duration_ms >= 2 x speech_pad_ms: neighbouring pieces never overlap.
FILE_VAD = VadOptions(
    threshold=0.5,
    min_silence_duration_ms=500,
    speech_pad_ms=200,
    min_speech_duration_ms=250,
    max_utterance_s=MAX_CHUNK_S,
    stream_head_ms=500,
)
# Decoded audio per VAD job: 256 Silero windows (8.2 s), one job of a request in flight. File
# jobs queue behind the sessions' windows (a lower priority) and never share a batch with them.
BLOCK_SAMPLES = 256 * WINDOW_SAMPLES
VAD_PRIORITY = 1
MIN_AUDIO_S = 0.1  # shorter files are refused, as OpenAI refuses them (audio_too_short)
MAX_BAD_PACKETS = 50  # packets in a row that do not decode end the file
# Decoding threads, shared by the requests (a step is a block: tens of milliseconds).
_DECODE_POOL = ThreadPoolExecutor(
    max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="file-decode"
)


class UndecodableAudio(ValueError):
    """The file holds no audio FFmpeg can decode."""


class AudioTooShort(ValueError):
    """Less than MIN_AUDIO_S of audio."""


class AudioTooLong(ValueError):
    """More audio than the deployment transcribes in one request."""


@dataclass(frozen=True)
class FileOptions:
    language: str | None  # None: detected once, from the first chunk (multilingual models)
    prompt: str = ""
    temperature: float = 0.0
    word_timestamps: bool = False
    beam_size: int = 5
    max_audio_s: float = 7200.0


@dataclass
class TimedWord:
    word: str
    start: float
    end: float


@dataclass
class TimedSegment:
    """One Whisper segment, its times in the file (OpenAI's verbose_json segment, less its id)."""

    seek: int  # the file's centisecond (mel frame) where its decode window starts
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float
    avg_logprob: float
    compression_ratio: float
    no_speech_prob: float
    words: list[TimedWord] = field(default_factory=list)


@dataclass
class ChunkTranscript:
    segments: list[TimedSegment]
    language: str

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


@dataclass
class FileTranscript:
    """What a request gets: its segments in order, the file's duration and language."""

    segments: list[TimedSegment]
    duration_s: float
    language: str

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.segments)


# -- decoding ------------------------------------------------------------------------------------
class BufferFile:
    """A read-only file over a bytes-like object without copying it (``io.BytesIO`` copies a
    memoryview: an upload would be held twice), for PyAV."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data).cast("B")
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size is None or size < 0 else self._position + size
        out = self._data[self._position : end].tobytes()
        self._position += len(out)
        return out

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: len(self._data)}
        self._position = min(max(base[whence] + offset, 0), len(self._data))
        return self._position

    def tell(self) -> int:
        return self._position


def decode_blocks(
    data: bytes | memoryview, block_samples: int = BLOCK_SAMPLES, max_audio_s: float = float("inf")
) -> Iterator[np.ndarray]:
    """16 kHz float32 mono blocks of ``block_samples`` (the last one shorter) of the first audio
    stream of a file in any container and codec FFmpeg reads (PyAV). Channels are averaged.

    Raises UndecodableAudio before the first block when nothing can be decoded, and
    AudioTooLong when the file declares, or turns out to hold, more than ``max_audio_s``. A
    packet that does not decode is skipped; a container that cannot be read on ends the file
    there (a truncated upload is transcribed as far as it goes)."""
    import av

    try:
        container = av.open(BufferFile(data), mode="r", metadata_errors="ignore")
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise UndecodableAudio(f"not a media file FFmpeg reads ({exc})") from exc
    with container:
        if not container.streams.audio:
            raise UndecodableAudio("the file has no audio stream")
        stream = container.streams.audio[0]
        declared = float(stream.duration * stream.time_base) if stream.duration else None
        if declared is None and container.duration:
            declared = container.duration / av.time_base
        if declared is not None and declared > max_audio_s + 1:
            raise AudioTooLong(f"{declared:.0f} s of audio")
        stream.thread_type = "AUTO"
        to_planar = av.AudioResampler(format="fltp")
        resampler: soxr.ResampleStream | None = None
        rate = 0
        pending: list[np.ndarray] = []
        pending_len = 0
        total = 0
        limit = max_audio_s * SAMPLE_RATE_HZ

        def decoded() -> Iterator[av.AudioFrame]:
            """The stream's frames; a packet that does not decode is skipped (as FFmpeg's tools
            skip it: one bad packet must not cost the rest of an hour), too many in a row end
            the file, and so does a container that cannot be read on."""
            bad = 0
            for packet in container.demux(stream):
                try:
                    frames = packet.decode()
                except (av.FFmpegError, ValueError) as exc:
                    bad += 1
                    if bad > MAX_BAD_PACKETS:
                        raise
                    logger.debug("skipped a packet that does not decode: %s", exc)
                    continue
                bad = 0
                yield from frames

        def frames() -> Iterator[np.ndarray]:
            nonlocal resampler, rate
            got_audio = False
            try:
                for frame in decoded():
                    for planar in to_planar.resample(frame):
                        samples = planar.to_ndarray().mean(axis=0, dtype=np.float32)
                        if planar.sample_rate != rate:  # the first frame, or a rate change
                            if resampler is not None:
                                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
                            rate = planar.sample_rate
                            resampler = soxr.ResampleStream(rate, SAMPLE_RATE_HZ, 1, "float32")
                        got_audio = got_audio or len(samples) > 0
                        yield resampler.resample_chunk(samples)
            except (av.FFmpegError, ValueError) as exc:
                if not got_audio:
                    raise UndecodableAudio(f"its audio cannot be decoded ({exc})") from exc
                logger.warning("decoding stopped after %.1f s: %s", total / SAMPLE_RATE_HZ, exc)
            if not got_audio:
                raise UndecodableAudio("the file's audio stream holds no audio")
            if resampler is not None:
                yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)

        for samples in frames():
            samples = np.nan_to_num(samples, copy=False, nan=0.0, posinf=1.0, neginf=-1.0)
            np.clip(samples, -1.0, 1.0, out=samples)
            pending.append(samples)
            pending_len += len(samples)
            total += len(samples)
            if total > limit:
                raise AudioTooLong(f"over {max_audio_s:.0f} s of audio")
            while pending_len >= block_samples:
                joined = np.concatenate(pending)
                yield joined[:block_samples]
                pending, pending_len = [joined[block_samples:]], pending_len - block_samples
        if pending_len:
            yield np.concatenate(pending)


# -- chunking ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Piece:
    """An utterance's audio (pads included) and where it starts in the file."""

    file_start_s: float
    audio: np.ndarray

    @property
    def duration_s(self) -> float:
        return len(self.audio) / SAMPLE_RATE_HZ


class TimeMap:
    """Chunk seconds -> file seconds for a chunk made of pieces joined end to end."""

    def __init__(self, pieces: list[Piece]) -> None:
        self._starts: list[float] = []  # each piece's start in the chunk
        self._pieces = pieces
        at = 0.0
        for piece in pieces:
            self._starts.append(at)
            at += piece.duration_s
        self.duration_s = at

    def to_file(self, t: float, *, end: bool = False) -> float:
        """Where chunk time ``t`` lies in the file. A time on the seam of two pieces is the
        earlier piece's end when ``end`` (a segment or word ending there), else the later
        piece's start."""
        t = min(max(t, 0.0), self.duration_s)
        index = (bisect_left if end else bisect_right)(self._starts, t) - 1
        index = max(index, 0)
        return self._pieces[index].file_start_s + (t - self._starts[index])


@dataclass
class Chunk:
    pieces: list[Piece]
    audio: np.ndarray = field(init=False)
    times: TimeMap = field(init=False)

    def __post_init__(self) -> None:
        self.audio = np.concatenate([p.audio for p in self.pieces]).astype(np.float32)
        self.times = TimeMap(self.pieces)

    @property
    def file_start_s(self) -> float:
        return self.pieces[0].file_start_s


class SpeechChunker:
    """Sans-I/O: 512-sample windows and their speech probabilities in, chunks out (utterances
    from a VadSegmenter, too-short ones dropped, joined up to ``max_chunk_s``)."""

    def __init__(self, vad: VadOptions = FILE_VAD, max_chunk_s: float = MAX_CHUNK_S) -> None:
        self.segmenter = VadSegmenter(vad)
        self._max_samples = int(max_chunk_s * SAMPLE_RATE_HZ)
        self._pieces: list[Piece] = []
        self._samples = 0

    def push(self, window: np.ndarray, prob: float) -> list[Chunk]:
        return self._take(self.segmenter.push(window, prob))

    def flush(self) -> list[Chunk]:
        chunks = self._take(self.segmenter.flush())
        if self._pieces:
            chunks.append(Chunk(self._pieces))
            self._pieces, self._samples = [], 0
        return chunks

    def _take(self, events) -> list[Chunk]:
        chunks = []
        for event in events:
            if not isinstance(event, SpeechEnded) or event.too_short or not len(event.audio):
                continue
            if self._pieces and self._samples + len(event.audio) > self._max_samples:
                chunks.append(Chunk(self._pieces))
                self._pieces, self._samples = [], 0
            self._pieces.append(Piece(event.start_s, event.audio))
            self._samples += len(event.audio)
        return chunks


# -- results -------------------------------------------------------------------------------------
def _compression_ratio(text: str) -> float:
    data = text.encode()
    return len(data) / max(len(zlib.compress(data)), 1) if data else 0.0


def file_segments(chunk: Chunk, transcript: Transcript) -> list[TimedSegment]:
    """A chunk's transcript in file times. avg_logprob, compression_ratio, no_speech_prob and
    temperature are per decode, as Whisper's are per window."""
    ratio = _compression_ratio(transcript.text)
    to_file = chunk.times.to_file
    out = []
    for seg in transcript.segments:
        out.append(
            TimedSegment(
                seek=round(to_file(seg.seek / 100) * 100),
                start=to_file(seg.start),
                end=to_file(seg.end, end=True),
                text=seg.text.strip(),
                tokens=list(seg.tokens),
                temperature=transcript.temperature,
                avg_logprob=seg.avg_logprob if seg.avg_logprob is not None else 0.0,
                compression_ratio=ratio,
                no_speech_prob=seg.no_speech_prob,
                words=[
                    TimedWord(w.word, to_file(w.start), to_file(w.end, end=True)) for w in seg.words
                ],
            )
        )
    return out


# -- the request ---------------------------------------------------------------------------------
class FileTranscriber:
    """One request's file through the shared scheduler; ``chunks()`` yields its chunks'
    transcripts in order, ``duration_s`` is known once it is exhausted."""

    def __init__(
        self, scheduler: Scheduler, options: FileOptions, request_id: str, window: int = 32
    ) -> None:
        self.scheduler = scheduler
        self.options = options
        self.id = request_id
        self.window = max(window, 1)
        self.duration_s = 0.0
        self.language = options.language or ("en" if not scheduler.engine.multilingual else None)
        self.chunks_decoded = 0

    async def chunks(self, data: bytes | memoryview) -> AsyncIterator[ChunkTranscript]:
        started = time.monotonic()
        blocks = decode_blocks(data, max_audio_s=self.options.max_audio_s)
        state = VadStreamState.after_silence()
        chunker = SpeechChunker()
        pending: deque[tuple[Chunk, asyncio.Future]] = deque()
        carry = np.zeros(0, np.float32)
        samples = 0
        # One block decodes in a worker thread while the previous one is in the VAD.
        step = _DECODE_POOL.submit(next, blocks, None)
        FILE_TRANSCRIPTIONS_ACTIVE.inc()
        try:
            while True:
                block = await asyncio.wrap_future(step)
                last = block is None
                if not last:
                    step = _DECODE_POOL.submit(next, blocks, None)
                audio = carry if last else np.concatenate([carry, block])
                samples += 0 if last else len(block)
                if last and len(carry):  # the file's last partial window, padded with silence
                    audio = np.concatenate([carry, np.zeros(WINDOW_SAMPLES - len(carry))])
                usable = len(audio) - len(audio) % WINDOW_SAMPLES
                carry = audio[usable:].astype(np.float32)
                windows = audio[:usable].astype(np.float32).reshape(-1, WINDOW_SAMPLES)
                ready: list[Chunk] = []
                if len(windows):
                    result = await self.scheduler.vad.submit(
                        (state, windows), stream_id=self.id, priority=VAD_PRIORITY
                    )
                    state = result.state  # the worker advanced it; it is ours again
                    for window, prob in zip(windows, result.probabilities, strict=True):
                        ready += chunker.push(window, float(prob))
                if last:
                    ready += chunker.flush()
                for chunk in ready:
                    if len(pending) >= self.window:
                        yield await self._result(*pending.popleft())
                    pending.append((chunk, await self._submit(chunk)))
                if last:
                    break
            self.duration_s = samples / SAMPLE_RATE_HZ
            if self.duration_s < MIN_AUDIO_S:
                raise AudioTooShort(f"{self.duration_s:.3f} s of audio")
            while pending:
                yield await self._result(*pending.popleft())
            wall = time.monotonic() - started
            logger.info(
                "request %s: %.1f s of audio, %d chunks in %.1f s (real-time factor %.3f)",
                self.id,
                self.duration_s,
                self.chunks_decoded,
                wall,
                wall / max(self.duration_s, 1e-9),
            )
        finally:
            FILE_TRANSCRIPTIONS_ACTIVE.dec()
            # Closed once no thread runs it (a cancelled await leaves the thread going): the
            # callback runs after its step, or at once.
            step.add_done_callback(lambda _: blocks.close())
            for _, future in pending:
                future.cancel()
            self.scheduler.forget(self.id)

    async def _submit(self, chunk: Chunk) -> asyncio.Future:
        o = self.options
        if self.language is None:  # detected once, from the first chunk's speech
            detect = DecodeOptions(language=None, language_detection_only=True)
            job = TranscribeJob(JobKind.FINAL, chunk.audio, detect)
            self.language = (await self._whisper(job)).language
        decode = DecodeOptions(
            language=self.language,
            prompt=o.prompt,
            word_timestamps=o.word_timestamps,
            beam_size=o.beam_size,
            temperature=o.temperature,
        )
        return self._whisper(TranscribeJob(JobKind.FINAL, chunk.audio, decode))

    def _whisper(self, job: TranscribeJob) -> asyncio.Future:
        return self.scheduler.submit_transcription(
            job, stream_id=self.id, priority=int(JobKind.FINAL), replace_key=None
        )

    async def _result(self, chunk: Chunk, future: asyncio.Future) -> ChunkTranscript:
        transcript: Transcript = await future
        self.chunks_decoded += 1
        return ChunkTranscript(file_segments(chunk, transcript), transcript.language)


async def transcribe_file(
    scheduler: Scheduler,
    data: bytes | memoryview,
    options: FileOptions,
    request_id: str,
    window: int = 32,
) -> FileTranscript:
    """The whole file at once (what every response_format but a stream needs)."""
    transcriber = FileTranscriber(scheduler, options, request_id, window)
    segments: list[TimedSegment] = []
    async for chunk in transcriber.chunks(data):
        segments += chunk.segments
    language = transcriber.language or options.language or "en"
    return FileTranscript(segments, transcriber.duration_s, language)
