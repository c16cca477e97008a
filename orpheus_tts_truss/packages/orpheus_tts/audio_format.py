"""The client's audio format: Orpheus's PCM (s16le, 24 kHz) in, the session's format out.

Streaming and stateful, one encoder per session: ``encode`` takes each chunk as it leaves the
model and returns what can go to the client now (a codec may hold back up to a frame);
``finish`` ends a turn (the resampler's and codec's tails; an mp3 or Ogg stream is complete
after it and the next ``encode`` starts a fresh one, so each turn of an event-mode session is a
whole file, and the turns concatenate: bare mp3 frames, chained Ogg streams; PCM and a WAV's one
header simply go on); ``reset`` drops what is held back (``clear``: nothing of the cleared text
may come out later).

Resampling is soxr's streaming resampler (``speech_common.audio.StreamingResampler``); the codecs
are FFmpeg's (PyAV ships it in its wheel): ``pcm_mulaw``, ``pcm_alaw``, ``libmp3lame`` and
``libopus`` in Ogg. Raw PCM and WAV need no codec; WAV's header is written once per stream with
the "unknown length" sizes that streaming WAV writers use (readers take the data to its end).

The default, ``pcm_s16le`` at 24 kHz, is the published protocol's audio: the bytes pass through
untouched.

Off the event loop: an encoder with an FFmpeg codec (``AudioEncoder.offloaded``: mu-law, A-law,
mp3, opus) is never called on the event loop. The session hands it to an ``EncodeService``
worker with the calls to make (``EncodeJob``) and takes it back with their output
(``EncodeResult``): one job per session at a time, so a stream's chunks stay in order and no two
threads touch its FFmpeg state. PCM and WAV (numpy and soxr only) stay on the loop, no job.
"""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

import numpy as np

from orpheus_tts.loudness import LoudnessNormalizer
from orpheus_tts.tokens import SAMPLE_RATE_HZ as MODEL_RATE_HZ  # Orpheus/SNAC output
from speech_common.audio import StreamingResampler
from speech_common.ws import CloseCode, ProtocolError

SUPPORTED_RATES_HZ = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
OPUS_RATES_HZ = (8000, 16000, 24000, 48000)  # what libopus encodes (it has no 22.05/44.1 kHz)
TELEPHONY_RATE_HZ = 8000  # μ-law and A-law default to the telephone rate
# Ogg pages are flushed at least this often, so opus audio is not held back a second (the
# muxer's default page duration).
OGG_PAGE_DURATION_US = 20_000
MP3_BITRATE = 64_000  # mono speech; lame's default (128 kbit/s) is for stereo music
OPUS_BITRATE = 32_000
# WAV data size of a stream of unknown length (the largest the 32-bit fields allow).
WAV_UNKNOWN_SIZE = 0xFFFFFFFF


class AudioFormat(StrEnum):
    PCM_S16LE = "pcm_s16le"
    PCM_F32LE = "pcm_f32le"
    MULAW = "mulaw"
    ALAW = "alaw"
    WAV = "wav"
    MP3 = "mp3"
    OPUS = "opus"


# FFmpeg muxer and encoder per codec format.
_CONTAINERS = {
    AudioFormat.MULAW: ("mulaw", "pcm_mulaw", {}),
    AudioFormat.ALAW: ("alaw", "pcm_alaw", {}),
    # No ID3 tag and no Xing frame: a turn's stream is bare MPEG frames, so the turns of a
    # session concatenate into one valid mp3 (a tag mid-file made FFmpeg's decoder fail).
    AudioFormat.MP3: ("mp3", "libmp3lame", {"write_xing": "0", "id3v2_version": "0"}),
    AudioFormat.OPUS: ("ogg", "libopus", {"page_duration": str(OGG_PAGE_DURATION_US)}),
}
_BITRATES = {AudioFormat.MP3: MP3_BITRATE, AudioFormat.OPUS: OPUS_BITRATE}


def default_rate(fmt: AudioFormat) -> int:
    return TELEPHONY_RATE_HZ if fmt in (AudioFormat.MULAW, AudioFormat.ALAW) else MODEL_RATE_HZ


def check_format(fmt: AudioFormat, rate: int) -> None:
    """Raise a typed 1003 for a rate this format cannot carry."""
    if rate not in SUPPORTED_RATES_HZ:
        raise ProtocolError(
            "unsupported_sample_rate",
            f"sample_rate {rate} is not supported; choose one of {list(SUPPORTED_RATES_HZ)}",
            CloseCode.UNSUPPORTED_DATA,
        )
    if fmt is AudioFormat.OPUS and rate not in OPUS_RATES_HZ:
        raise ProtocolError(
            "unsupported_sample_rate",
            f"opus cannot be encoded at {rate} Hz; choose one of {list(OPUS_RATES_HZ)}",
            CloseCode.UNSUPPORTED_DATA,
        )


def wav_header(rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream whose length is not known yet."""
    fmt_chunk = struct.pack("<4sIHHIIHH", b"fmt ", 16, 1, 1, rate, rate * 2, 2, 16)
    return (
        struct.pack("<4sI4s", b"RIFF", WAV_UNKNOWN_SIZE, b"WAVE")
        + fmt_chunk
        + struct.pack("<4sI", b"data", WAV_UNKNOWN_SIZE)
    )


class _Sink(io.RawIOBase):
    """Where the muxer writes; ``take`` hands out what it wrote since the last call."""

    def __init__(self) -> None:
        self._data = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # noqa: ANN001 (bytes-like from FFmpeg)
        self._data += data
        return len(data)

    def take(self) -> bytes:
        out = bytes(self._data)
        self._data.clear()
        return out


class _CodecStream:
    """One FFmpeg container stream (mu-law, A-law, mp3 or Ogg Opus) being written."""

    def __init__(self, fmt: AudioFormat, rate: int, bitrate_bps: int | None = None) -> None:
        import av  # PyAV: imported with the first encoded session, not at import time

        self._av = av
        container_format, codec, options = _CONTAINERS[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, "w", format=container_format, options=options)
        self._stream = self._container.add_stream(codec, rate=rate)
        self._stream.layout = "mono"
        if fmt in _BITRATES:
            self._stream.bit_rate = bitrate_bps or _BITRATES[fmt]
        self._rate = rate
        self._pts = 0

    def encode(self, samples: np.ndarray) -> bytes:
        frame = self._av.AudioFrame.from_ndarray(
            samples.reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self._rate
        frame.pts = self._pts
        self._pts += len(samples)
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 (dropping a stream: nothing of it is wanted)
            pass


class AudioEncoder:
    """The session's output stream (see the module docstring)."""

    def __init__(
        self,
        fmt: AudioFormat,
        rate: int,
        source_rate: int = MODEL_RATE_HZ,
        gain_db: float = 0.0,
        normalize_loudness: bool = False,
        bitrate_bps: int | None = None,
    ) -> None:
        check_format(fmt, rate)
        self.format = fmt
        self.gain = 10 ** (gain_db / 20)
        self.bitrate_bps = bitrate_bps  # mp3 / opus; None: MP3_BITRATE / OPUS_BITRATE
        self._loudness = LoudnessNormalizer(source_rate) if normalize_loudness else None
        self.rate = rate
        self.source_rate = source_rate
        self.samples_in = 0  # at ``source_rate``: the session's audio timeline
        self.samples_out = 0  # at ``rate`` (behind ``samples_in`` by what soxr holds)
        self._passthrough = (
            fmt is AudioFormat.PCM_S16LE
            and rate == source_rate
            and not gain_db
            and not normalize_loudness
        )
        self._resampler: StreamingResampler | None = None
        self._codec: _CodecStream | None = None
        self._started = False  # a stream (and for WAV its header) has begun

    @property
    def offloaded(self) -> bool:
        """An FFmpeg codec encodes this format: its calls run on an encode worker (``EncodeJob``),
        never on the event loop (an mp3 chunk costs about a millisecond)."""
        return self.format in _CONTAINERS

    def encode(self, pcm: bytes) -> bytes:
        """One chunk of s16le mono PCM at the source rate; returns the bytes to send now."""
        self.samples_in += len(pcm) // 2
        if self._passthrough:
            self.samples_out += len(pcm) // 2
            return pcm
        samples = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768.0
        if self._loudness is not None:  # the level first; volume_db is relative to it
            samples = self._loudness.process(samples)
        if self.gain != 1.0:
            samples *= self.gain
        samples = self._resample(samples)
        return self._start() + self._emit(samples)

    @property
    def timeline_s(self) -> float:
        """Seconds of audio given to the encoder in this session (the resampler's delay does
        not shift it: a stream's decoded length after ``finish`` equals it)."""
        return self.samples_in / self.source_rate

    def finish(self) -> bytes:
        """End the current stream: the resampler's and codec's tails. The next ``encode``
        begins a new stream."""
        if self._passthrough or not self._started:
            return b""
        tail = b""
        if self._resampler is not None:
            tail = self._emit(self._resampler.process(np.zeros(0, np.float32), last=True))
            self._resampler = None
        if self._codec is not None:
            tail += self._codec.finish()
            self._codec = None
            self._started = False
        # PCM and WAV need no new stream: a WAV's one header stays valid for the whole session.
        return tail

    def reset(self) -> None:
        """Drop what the resampler and codec hold back, unsent; a codec's next ``encode``
        begins a new stream."""
        if self._codec is not None:
            self._codec.close()
            self._codec = None
            self._started = False
        self._resampler = None

    # -- internals -------------------------------------------------------------------------
    def _resample(self, samples: np.ndarray) -> np.ndarray:
        if self._resampler is None:
            self._resampler = StreamingResampler(self.source_rate, self.rate)
        return self._resampler.process(samples)

    def _start(self) -> bytes:
        if self._started:
            return b""
        self._started = True
        if self.format in _CONTAINERS:
            self._codec = _CodecStream(self.format, self.rate, self.bitrate_bps)
        if self.format is AudioFormat.WAV:
            return wav_header(self.rate)
        return b""

    def _emit(self, samples: np.ndarray) -> bytes:
        if not len(samples):
            return b""
        self.samples_out += len(samples)
        if self.format is AudioFormat.PCM_F32LE:
            return np.clip(samples, -1.0, 1.0).astype("<f4").tobytes()
        s16 = np.clip(np.round(samples * 32768.0), -32768, 32767).astype("<i2")
        if self._codec is not None:
            return self._codec.encode(s16)
        return s16.tobytes()  # pcm_s16le at another rate, or WAV's data


# -- off the event loop ---------------------------------------------------------------------------
ENCODE_WORKER = "audio_encode"
# FFmpeg's encoders release the GIL (PyAV calls avcodec_send_frame without it), so threads encode
# in parallel: mp3 at 44.1 kHz costs ~2 ms per 85 ms chunk on the 2-core dev CPU (one thread:
# ~40 real-time streams), so 4 threads cover max_sessions (64) with room.
ENCODE_THREADS = 4


class EncoderOp(Enum):
    """A call on an ``AudioEncoder`` other than ``encode`` (whose op is the chunk's bytes)."""

    FINISH = "finish"  # the turn's end: the resampler's and codec's tails
    RESET = "reset"  # a clear: drop what is held back, unsent


@dataclass(frozen=True, eq=False)
class EncodeJob:
    """A session's encoder, handed over with the calls to make on it, in order (bytes: a chunk
    to ``encode``). The session keeps no reference to it until the result hands it back."""

    encoder: AudioEncoder
    ops: tuple[bytes | EncoderOp, ...]


@dataclass(frozen=True, eq=False)
class EncodeResult:
    encoder: AudioEncoder  # handed back to the session
    outputs: tuple[bytes, ...]  # one per op: the bytes to send (b"" for RESET, or held back)


def run_encode_job(job: EncodeJob) -> EncodeResult:
    """Make a job's calls on its encoder (on an encode worker's thread)."""
    outputs = []
    for op in job.ops:
        if op is EncoderOp.FINISH:
            outputs.append(job.encoder.finish())
        elif op is EncoderOp.RESET:
            job.encoder.reset()
            outputs.append(b"")
        else:
            outputs.append(job.encoder.encode(op))
    return EncodeResult(job.encoder, tuple(outputs))


class EncodeService:
    """The encode workers: ``ENCODE_THREADS`` ``BatchWorker`` threads shared by every session
    (a job goes to the least busy one); one job per session at a time is the session's rule."""

    def __init__(self, threads: int = ENCODE_THREADS) -> None:
        from speech_common.batching import BatchWorker

        # max_batch 1: jobs of different sessions gain nothing from sharing a batch, and each
        # result goes back as soon as it is ready.
        self._workers = [
            BatchWorker(f"{ENCODE_WORKER}-{i}", self._run, max_batch=1) for i in range(threads)
        ]
        self._turn = itertools.count()  # breaks ties between idle workers round-robin

    @staticmethod
    def _run(jobs: list[EncodeJob]) -> list[EncodeResult | BaseException]:
        out: list[EncodeResult | BaseException] = []
        for job in jobs:
            try:
                out.append(run_encode_job(job))
            except Exception as exc:  # noqa: BLE001 (this session's job fails, not the worker)
                out.append(exc)
        return out

    def start(self) -> EncodeService:
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        for worker in self._workers:
            worker.stop()

    @property
    def healthy(self) -> bool:
        return all(worker.healthy for worker in self._workers)

    def submit(self, job: EncodeJob, stream_id: Hashable) -> Any:
        """Queue a job; an asyncio future on the caller's loop resolves with its result."""
        n = len(self._workers)
        first = next(self._turn) % n
        order = self._workers[first:] + self._workers[:first]
        return min(order, key=lambda w: w.queue_depth).submit(job, stream_id=stream_id)

    def cancel_stream(self, stream_id: Hashable) -> int:
        """Drop a session's queued job (its encoder goes with it: nothing else holds it)."""
        return sum(worker.cancel_stream(stream_id) for worker in self._workers)
